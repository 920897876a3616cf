"""Registries: map the `name` a config uses to the class or function that builds it.

    MODELS = Registry("model")

    @MODELS.register()            # registered under the function/class name
    def IResNet50(**kw): ...

    MODELS.build("IResNet50", num_features=512)

Nothing here ever evaluates config text; an unknown name is a ConfigError listing the valid ones.
"""
import difflib

from plsc.errors import ConfigError


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name=None):
        def deco(obj):
            key = name or obj.__name__
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def names(self):
        return sorted(self._items)

    def __contains__(self, name):
        return name in self._items

    def get(self, name):
        _import_builtins()
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}s: {', '.join(self.names())}"
            )
        return self._items[name]

    def build(self, name, *args, **kwargs):
        return self.get(name)(*args, **kwargs)


MODELS = Registry("model")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
LR_SCHEDULERS = Registry("lr scheduler")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
SAMPLERS = Registry("sampler")
METRICS = Registry("metric")
GRAD_CLIPS = Registry("grad clip")
SPARSE_OPTIMIZERS = Registry("sparse FC optimizer")  # keyed by the dense optimizer's name

_BUILTIN_MODULES = (
    "plsc.models",
    "plsc.nn",
    "plsc.optim",
    "plsc.data",
    "plsc.metrics",
)
_imported = False


def _import_builtins():
    """Import the packages whose modules register the built-in names (once, lazily)."""
    global _imported
    if _imported:
        return
    _imported = True
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
