"""The one way weights enter a backbone: strict, all or nothing.

    load_backbone(backbone, arrays, "pretrained model output/IResNet18/latest", model_name="IResNet50")

Every parameter and buffer of the backbone's state_dict must come from `arrays` ({name: array}) with
the same shape; a missing, unexpected or mis-shaped tensor is one CheckpointError naming it (and,
when the file plainly holds another registered backbone, that Model.name), and the backbone is left
untouched. `check_backbone_state` is the same check against {name: shape} without a built model
(plsc-import's output, start-up checks before a run directory is created).
"""
import paddle

from plsc.errors import CheckpointError
from plsc.registry import MODELS

_HEAVY = {"IResNet2060": 5000}  # built to compare only when the file has at least this many tensors (4 s)
_shape_cache = {}


def backbone_shapes(name, **kwargs):
    """{state_dict name: shape} of registered backbone `name`, built lazily (no weights allocated)."""
    import plsc.models  # noqa: F401  (registers the backbones; inside: plsc.models imports this module)

    key = (name, repr(sorted(kwargs.items())))
    if key not in _shape_cache:
        with paddle.utils.unique_name.guard(), paddle.LazyGuard():  # the caller's parameter names do not move
            model = MODELS.build(name, **kwargs)
        _shape_cache[key] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _shape_cache[key]


def match_score(ref, shapes):
    """Share of the tensors of both that have the same name and shape (1.0: identical state_dict layouts)."""
    same = sum(1 for k, s in shapes.items() if ref.get(k) == tuple(s))
    return same / max(len(ref), len(shapes), 1)


def nearest_model(shapes, num_features=None, baseline=0.5):
    """The registered Model.name (built with its defaults and `num_features`) whose state_dict matches
    `shapes` ({name: shape}) better than `baseline`, and whether it matches exactly; else (None, False)."""
    import plsc.models  # noqa: F401  (registers the backbones; inside: plsc.models imports this module)

    best, best_score, exact = None, max(baseline, 0.5), False
    for name in MODELS.names():
        if len(shapes) < _HEAVY.get(name, 0):
            continue
        kwargs = {"num_features": num_features} if num_features else {}
        try:
            ref = backbone_shapes(name, **kwargs)
        except Exception:  # noqa: BLE001  (an option the backbone does not take: not a candidate)
            continue
        score = match_score(ref, shapes)
        if score > best_score:
            best, best_score, exact = name, score, score == 1.0
    return best, exact


def _listed(items, limit=6):
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_backbone_state(own, shapes, source, model_name=None, num_features=None):
    """Raise CheckpointError unless `shapes` ({name: shape} from a file) has exactly the keys of `own`
    ({name: shape} of the configured backbone), each with the same shape."""
    missing = [k for k in own if k not in shapes]
    unexpected = [k for k in shapes if k not in own]
    misshaped = [f"{k} {list(shapes[k])} in the file, {list(own[k])} in the model" for k in own
                 if k in shapes and tuple(shapes[k]) != tuple(own[k])]
    if not (missing or unexpected or misshaped):
        return
    what = f"the {model_name} built from the config" if model_name else "the configured backbone"
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the model missing from the file: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the file the model does not have: {_listed(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} tensor(s) of another shape: {_listed(misshaped, 3)}")
    hint = ""
    # a hint only when a registered backbone fits the file better than the configured one does
    other, exact = nearest_model(shapes, num_features, baseline=match_score(own, shapes))
    if other is not None and other != model_name:
        hint = (f"; the file holds {'the weights of' if exact else 'weights closest to'} {other}: "
                f"-o Model.name={other}")
    raise CheckpointError(f"{source} does not match {what} (nothing was loaded): {'; '.join(parts)}{hint}")


def load_backbone(backbone, arrays, source, model_name=None, num_features=None):
    """Load {name: array} into `backbone` strictly (see the module doc); returns the backbone.
    model_name / num_features: the config's Model.name and Model.num_features (for the message)."""
    own = backbone.state_dict()
    check_backbone_state({k: tuple(v.shape) for k, v in own.items()},
                         {k: tuple(getattr(v, "shape", ())) for k, v in arrays.items()}, source,
                         model_name, num_features)
    backbone.set_state_dict({k: paddle.to_tensor(arrays[k]).astype(own[k].dtype) for k in own})
    return backbone
