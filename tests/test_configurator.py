import pytest

from conftest import REPO_ROOT
from configurator import COMMAND_LINE, describe_changes, load_config, load_config_or_exit
from model_config import ConfigError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_files_exec_in_order_and_overrides_come_last(tmp_path):
    a = write(tmp_path, "a.py", "arch_preset = 'llama'\nn_layer = 4\nlearning_rate = 1e-3\n")
    b = write(tmp_path, "b.py", "import math\nn_layer = n_layer * 2\n_helper = 3\nbatch_size = 2 ** 3\n")
    config, sources = load_config([a, b, "--learning_rate=3e-4", "--normalization=layernorm"])
    assert config.model.arch_preset == "llama" and config.model.n_layer == 8
    assert config.model.normalization == "layernorm" and config.model.position_encoding == "rope"
    assert config.train.learning_rate == 3e-4 and config.train.batch_size == 8
    assert sources["n_layer"] == b and sources["arch_preset"] == a
    assert sources["learning_rate"] == COMMAND_LINE and sources["position_encoding"] == "preset llama"


@pytest.mark.parametrize("raw,expected", [("True", True), ("true", True), ("1", True), ("False", False),
                                          ("false", False), ("0", False)])
def test_booleans_accept_common_spellings(raw, expected):
    config, _ = load_config([f"--bias={raw}"])
    assert config.model.bias is expected


def test_values_parse_as_literals_else_strings():
    config, _ = load_config(["--max_iters=20", "--learning_rate=1", "--dataset=shakespeare", "--run_name", "r1",
                             "--compile", "--lr_decay_iters=None"])
    assert config.train.max_iters == 20
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.train.dataset == "shakespeare" and config.train.run_name == "r1"
    assert config.train.compile is True and config.train.lr_decay_iters is None


def test_unknown_key_suggests_known_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'n_layers' in command line. Did you mean 'n_layer'"):
        load_config(["--n_layers=4"])
    path = write(tmp_path, "c.py", "learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match=r"'learning_rat' in config file .*c.py. Did you mean 'learning_rate'"):
        load_config([path])


@pytest.mark.parametrize("arg,needle", [
    ("--n_layer=2.5", "n_layer=2.5 (from command line) is a float, but n_layer takes int"),
    ("--n_layer=abc", "n_layer='abc' (from command line) is a str, but n_layer takes int"),
    ("--bias=maybe", "bias='maybe' (from command line) is a str, but bias takes bool"),
    ("--dataset=3", "dataset=3 (from command line) is a int, but dataset takes str"),
    ("--max_iters=True", "max_iters=True (from command line) is a bool, but max_iters takes int"),
])
def test_bad_types_are_errors(arg, needle):
    with pytest.raises(ConfigError) as info:
        load_config([arg])
    assert needle in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="Config file 'config/nope.py' does not exist"):
        load_config(["config/nope.py"])


def test_config_file_that_raises_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.py", "n_layer = 2\n\nn_head = undefined_name\n")
    with pytest.raises(ConfigError, match=r"bad.py raised NameError at line 3: name 'undefined_name'"):
        load_config([path])
    path = write(tmp_path, "syntax.py", "n_layer = 2\nn_head = (\n")
    with pytest.raises(ConfigError, match=r"syntax.py raised SyntaxError at line 2"):
        load_config([path])


def test_unknown_component_lists_registered_names():
    with pytest.raises(ConfigError, match="Unknown normalization 'rmsnrom'. Registered normalization names: "
                                          "layernorm, layernorm_nobias, rmsnorm. Did you mean 'rmsnorm'"):
        load_config(["--normalization=rmsnrom"])


def test_unknown_preset_is_explained():
    with pytest.raises(ConfigError, match="arch_preset='gtp2' .* Did you mean 'gpt2'"):
        load_config(["--arch_preset=gtp2"])


def test_bare_flag_needs_boolean_key():
    with pytest.raises(ConfigError, match="--n_layer needs a value"):
        load_config(["--n_layer"])


def test_errors_exit_with_code_2_and_one_paragraph(capsys):
    with pytest.raises(SystemExit) as info:
        load_config_or_exit(["--n_layers=4"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Configuration error: Unknown config key") and err.count("\n") == 1
    assert "Traceback" not in err


def test_describe_changes_names_each_source(tmp_path):
    path = write(tmp_path, "a.py", "arch_preset = 'llama'\nn_layer = 12\nmax_iters = 7\n")
    config, sources = load_config([path, "--dropout=0.1"])
    lines = "\n".join(describe_changes(config, sources))
    assert f"max_iters = 7  ({path})" in lines
    assert "dropout = 0.1  (command line)" in lines
    assert "normalization = 'rmsnorm'  (preset llama)" in lines
    assert "n_layer" not in lines  # equal to the default, so not a change


@pytest.mark.parametrize("name", ["arch_gpt2", "arch_llama", "arch_team", "arch_hybrid", "arch_custom"])
def test_shipped_arch_configs_load(name):
    config, _ = load_config([str(REPO_ROOT / "config" / f"{name}.py"), "--n_layer=2"])
    assert config.model.n_layer == 2


def test_logger_backends_from_the_command_line():
    config, _ = load_config(['--logger_backends=["tensorboard"]'])
    assert config.train.logger_backends == ["tensorboard"]
    assert load_config(["--logger_backends=[]"])[0].train.logger_backends == []
    assert load_config(["--logger_backends=tensorboard,wandb"])[0].train.logger_backends == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"'wandbb', which is not a logger.*Did you mean 'wandb'"):
        load_config(['--logger_backends=["tensorboard","wandbb"]'])


def test_a_logger_whose_package_is_missing_is_named(monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real_find_spec(name))
    with pytest.raises(ConfigError, match="needs wandb, which is not installed: pip install wandb"):
        load_config(['--logger_backends=["wandb"]'])
