"""pgolf: parameter golf — the best language model whose code + compressed weights fit in 16,000,000 bytes.

    cfg = pgolf.load_recipe("baseline", scale="tiny", overrides={"train.steps": 50})
    model = pgolf.build_model(cfg.model)
    result = pgolf.train(cfg, out_dir="runs/x")
    sizes = pgolf.pack(model, cfg, "a.pgolf"); model, cfg = pgolf.unpack("a.pgolf")
    ev = pgolf.evaluate(model, tokens, tokenizer_path, cfg.eval)
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, load_config, load_recipe  # noqa: E402
from .eval.bpb import EvalResult, evaluate  # noqa: E402
from .model.gpt import build_model, count_parameters  # noqa: E402
from .quant.pack import pack, unpack  # noqa: E402


def train(cfg: Config, out_dir=None, **kwargs):
    """Train `cfg` into `out_dir` (default runs/<recipe>-<time>-s<seed>); returns the result.json dict."""
    from .training.loop import train as _train
    return _train(cfg, out_dir, **kwargs)


__all__ = ["Config", "ConfigError", "EvalResult", "build_model", "count_parameters", "evaluate", "load_config",
           "load_recipe", "pack", "train", "unpack", "__version__"]
