"""Registries: map the `name` a config uses to the class or function that builds it.

    MODELS = Registry("model", {"IResNet50": "plsc.models.iresnet:IResNet50", ...})

    @MODELS.register()            # registered under the function/class name
    def IResNet50(**kw): ...

    MODELS.build("IResNet50", num_features=512)     # imports plsc.models.iresnet on first use
    MODELS.params("IResNet50")                      # the names it accepts, read from its source: no import

Each built-in name is listed below as "module:attr", so resolving a name, listing the names and checking a
config's keys against a builder's signature import nothing (loading a config does not import Paddle); the
module is imported when the builder is first built or fetched. A name registered by code (a plugin, a test)
without a table entry works the same way once its module is imported. Nothing here ever evaluates config text;
an unknown name is a ConfigError listing the valid ones.
"""
import ast
import difflib
import importlib
import inspect
import os

from plsc.errors import ConfigError

_PLSC_DIR = os.path.dirname(os.path.abspath(__file__))


class Registry:
    def __init__(self, kind, builtins=None):
        self.kind = kind
        self._table = dict(builtins or {})  # name -> "module:attr", imported on demand
        self._items = {}                    # name -> object, filled as modules register

    def register(self, name=None):
        def deco(obj):
            key = name or obj.__name__
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            where = f"{obj.__module__}:{obj.__qualname__}"
            if key in self._table and self._table[key] != where:
                raise ValueError(f"{self.kind} '{key}' is registered by {where}, but plsc.registry lists it as "
                                 f"{self._table[key]}")
            self._items[key] = obj
            return obj

        return deco

    def names(self):
        return sorted(set(self._table) | set(self._items))

    def __contains__(self, name):
        return name in self._table or name in self._items

    def unknown(self, name):
        """The ConfigError for a name that is not registered: the closest one and every registered name."""
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}s: {', '.join(self.names())}")

    def get(self, name):
        if name not in self._items:
            if name not in self._table:
                raise self.unknown(name)
            module, attr = self._table[name].split(":")
            self._items[name] = getattr(importlib.import_module(module), attr)
        return self._items[name]

    def build(self, name, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def params(self, name):
        """The keyword names the builder accepts (None: any, it takes **kwargs), without importing a built-in's
        module: read from its source (an imported or code-registered builder: from its signature)."""
        if name in self._items:
            return builder_params(self._items[name])
        if name not in self._table:
            raise self.unknown(name)
        module, attr = self._table[name].split(":")
        return _SourceSignatures.of(module).params(attr)


def builder_params(builder):
    """Names the builder accepts (None when it takes arbitrary **kwargs).

    A class whose __init__ forwards **kwargs to its base accepts its own names plus the base's."""
    targets = [c.__init__ for c in builder.__mro__ if "__init__" in vars(c)] if inspect.isclass(builder) else [builder]
    names = []
    for target in targets:
        if target is object.__init__:
            return None
        params = inspect.signature(target).parameters.values()
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


class _SourceSignatures:
    """builder_params() read from a plsc module's source with ast (functions, and classes whose bases are
    defined in the same module), so that checking a config imports nothing."""

    _cache = {}

    def __init__(self, module):
        path = os.path.join(_PLSC_DIR, *module.split(".")[1:]) + ".py"
        if module.split(".")[0] != "plsc" or not os.path.isfile(path):
            path = os.path.join(path[:-3], "__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        self.defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        self.module = module

    @classmethod
    def of(cls, module):
        if module not in cls._cache:
            cls._cache[module] = cls(module)
        return cls._cache[module]

    @staticmethod
    def _args(fn, skip_self):
        a = fn.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        return names[1:] if skip_self else names, a.kwarg is not None

    def params(self, attr):
        if attr not in self.defs:
            raise ValueError(f"{self.module} defines no function or class {attr}")
        node = self.defs[attr]
        if isinstance(node, ast.FunctionDef):
            names, var_kw = self._args(node, False)
            return None if var_kw else names
        names = []
        while isinstance(node, ast.ClassDef):
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            if init is not None:
                own, var_kw = self._args(init, True)
                names += own
                if not var_kw:
                    return names
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            if len(bases) != len(node.bases) or len(bases) > 1:
                raise ValueError(f"{self.module}:{attr}: cannot read the signature of a class with bases "
                                 f"{[ast.dump(b) for b in node.bases]} from its source")
            node = self.defs.get(bases[0]) if bases else None
            if bases and node is None:
                raise ValueError(f"{self.module}:{attr}: base {bases[0]} is not defined in {self.module}")
        return None  # the chain ends at object (no __init__ of its own): any keyword, as object.__init__ above


def _table(module, *names):
    return {n: f"{module}:{n}" for n in names}


MODELS = Registry("model", {
    **_table("plsc.models.iresnet", "IResNet18", "IResNet34", "IResNet50", "IResNet100", "IResNet200", "IResNet2060"),
    **_table("plsc.models.ir", "IR_18", "IR_34", "IR_50", "IR_101", "IR_SE_50"),
    **_table("plsc.models.mobilefacenet", "MobileFaceNet_base", "MobileFaceNet_large"),
    **_table("plsc.models.face_vit", "FaceViT_tiny_patch9_112", "FaceViT_small_patch9_112", "FaceViT_base_patch9_112",
             "FaceViT_large_patch9_112", "FaceViT_huge_patch9_112")})
LOSSES = Registry("loss", _table("plsc.nn.margins", "MarginLoss", "AdaFaceLoss"))
OPTIMIZERS = Registry("optimizer", _table("plsc.optim.optimizers", "Momentum", "AdamW"))
LR_SCHEDULERS = Registry("lr scheduler", _table("plsc.optim.lr", "Constant", "Poly", "Cosine", "Step", "MultiStep"))
DATASETS = Registry("dataset", {
    **_table("plsc.data.datasets", "FaceRecordIODataset", "FaceIdentificationDataset", "FaceVerificationDataset",
             "FaceBinDataset"),
    **_table("plsc.data.random_dataset", "FaceRandomDataset")})
TRANSFORMS = Registry("transform", {
    **_table("plsc.data.transforms", "DecodeImage", "RandFlipImage", "NormalizeImage", "ToCHWImage"),
    **_table("plsc.data.adaface_aug", "AdaFaceCrop", "AdaFaceLowRes", "AdaFacePhotometric")})
SAMPLERS = Registry("sampler", _table("plsc.data.samplers", "DistributedBatchSampler", "BatchSampler"))
METRICS = Registry("metric", _table("plsc.metrics.verification", "LFWAcc"))
GRAD_CLIPS = Registry("grad clip", _table("plsc.optim.grad_step", "ClipGradByGlobalNorm"))
SPARSE_OPTIMIZERS = Registry("sparse FC optimizer", {  # keyed by the dense optimizer's name
    "Momentum": "plsc.optim.sparse:SparseMomentum", "AdamW": "plsc.optim.sparse:SparseAdamW"})
ALL = {"MODELS": MODELS, "LOSSES": LOSSES, "OPTIMIZERS": OPTIMIZERS, "LR_SCHEDULERS": LR_SCHEDULERS,
       "DATASETS": DATASETS, "TRANSFORMS": TRANSFORMS, "SAMPLERS": SAMPLERS, "METRICS": METRICS,
       "GRAD_CLIPS": GRAD_CLIPS, "SPARSE_OPTIMIZERS": SPARSE_OPTIMIZERS}
