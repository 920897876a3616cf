"""PLSC's config keys, translated at the door into plsc's own schema.

A published PLSC face config loads with PLSC's meaning: load_config runs translate() on the raw mapping
(after `_base_` and `-o`, before validation), so the rest of plsc sees only its own keys:

    FP16 section without a level       -> FP16.level O2 (no FP16 section: O0), as in PLSC
    EMA section                        -> EMA.enabled true
    Global.device xpu / npu            -> cpu (one note)
    Model.pfc_config.sparse_update     -> Model.pfc_config.update_rows: sampled (true) / all (false, PLSC's dense
                                          update: every row's momentum and weight decay each step)
    Loss.Train.0.<loss>.model_parallel -> checked against Model.pfc_config.model_parallel, then removed
    Optimizer (AdamW) betas, eps       -> beta1, beta2, epsilon ("(0.9, 0.999)" as PLSC writes it is parsed as
                                          two numbers, never evaluated)
    keys with PLSC's one meaning       -> checked, removed (Global.task_type, train_epoch_func, eval_func,
                                          DataLoader.*.loader.collate_fn, DistributedStrategy.data_sharding,
                                          LRScheduler.last_epoch -1)
    keys without an effect in plsc     -> removed with one note each when set (Global.use_dali, Loss.Eval,
                                          Metric.Train, LRScheduler.verbose, Optimizer.exp_avg_force_fp32)

Nothing is dropped silently: a key either keeps its meaning, or is refused, or leaves a note (Config.notes,
logged by plsc-train) naming it. Every key here is listed, with its type, in PLSC_KEYS (docs/config.md).
"""
from plsc.config.schema import SCHEMA, Key
from plsc.config.validate import check_key
from plsc.errors import ConfigError

_ONE_MEANING = "PLSC key; plsc has this one meaning (checked, then unused)"
PLSC_KEYS = {
    "Global.task_type": Key("recognition", str, _ONE_MEANING, choices=["recognition"]),
    "Global.train_epoch_func": Key("default_train_one_epoch", str, "PLSC's train loop name (its configs before "
                                   "2022-12-26 spell it defualt_train_one_epoch); " + _ONE_MEANING,
                                   choices=["default_train_one_epoch", "defualt_train_one_epoch"]),
    "Global.eval_func": Key("face_verification_eval", str, _ONE_MEANING, choices=["face_verification_eval"]),
    "Global.use_dali": Key(False, bool, "PLSC key without effect (plsc's loader reads the data; a note when true)"),
    "DistributedStrategy.data_sharding": Key(False, bool, "PLSC key; true is refused (PLSC does not support it "
                                             "either)", choices=[False]),
    "DataLoader.Train.loader.collate_fn": Key("default_collate_fn", str, "PLSC's collate function name (stack "
                                              "every field); " + _ONE_MEANING, choices=["default_collate_fn"]),
    "DataLoader.Eval.loader.collate_fn": Key("default_collate_fn", str, "as DataLoader.Train.loader.collate_fn",
                                             choices=["default_collate_fn"]),
    "Model.pfc_config.sparse_update": Key(True, bool, "PLSC's spelling of Model.pfc_config.update_rows: true = "
                                          "sampled, false = all (PLSC's dense update)"),
    "Loss.Train.0.<loss>.model_parallel": Key(None, (bool, type(None)), "PLSC repeats Model.pfc_config."
                                              "model_parallel in the loss: must agree with it"),
    "Loss.Eval": Key([], list, "PLSC key without effect: verification evaluates embeddings (a note when set)"),
    "Metric.Train": Key([], list, "PLSC key, not computed (a note when set): PLSC's TopkAcc on the sampled, "
                        "shard-local logits does not measure a sharded classifier; the loss is logged"),
    "LRScheduler.verbose": Key(False, bool, "PLSC key without effect (the train log shows the rate every "
                               "print_batch_step; a note when true)"),
    "LRScheduler.last_epoch": Key(-1, int, "PLSC key: schedules start at the beginning (-1); another value is "
                                  "refused (to continue a run use Global.checkpoint)"),
    "Optimizer.betas": Key(None, (list, str), "AdamW: PLSC's (beta1, beta2), also as its text \"(0.9, 0.999)\""),
    "Optimizer.eps": Key(None, (int, float), "AdamW: PLSC's spelling of epsilon"),
    "Optimizer.exp_avg_force_fp32": Key(False, bool, "AdamW: PLSC key without separate effect (moments are fp32 "
                                        "whenever the weights are; a note when true)"),
}
_NO_EFFECT = {
    "Global.use_dali": "Global.use_dali has no effect: plsc's own loader reads the data (PLSC builds no DALI loader "
                       "for face recognition either)",
    "Loss.Eval": "Loss.Eval has no effect: evaluation is verification on embeddings (PLSC's face evaluation does "
                 "not use it either)",
    "Metric.Train": "Metric.Train is not computed: PLSC's TopkAcc over the sampled, shard-local logits does not "
                    "measure a sharded classifier; the training loss is logged instead",
    "LRScheduler.verbose": "LRScheduler.verbose has no effect: the train log shows the rate every print_batch_step",
}
_PRESENCE_DEFAULTS = {"FP16": ("level", "O2"), "EMA": ("enabled", True)}  # a section given means these


def translate(raw):
    """Rewrite the raw config mapping `raw` (in place) into plsc's schema; return the notes (one line per key
    that was accepted without effect or changed)."""
    notes = []
    for section, (key, value) in _PRESENCE_DEFAULTS.items():
        if section in raw and raw[section] is None:  # "FP16:" with nothing under it
            raw[section] = {key: value}
        elif isinstance(raw.get(section), dict) and key not in raw[section]:
            raw[section][key] = value
    for path, spec in PLSC_KEYS.items():
        if "<" in path or path.startswith("Optimizer.") or path == "Model.pfc_config.sparse_update":
            continue
        found, value = _pop(raw, path)
        if found:
            value = check_key(spec, value, path)
            if path in _NO_EFFECT and value:
                notes.append(_NO_EFFECT[path])
            if path == "LRScheduler.last_epoch" and value != -1:
                raise ConfigError(f"LRScheduler.last_epoch={value}: plsc starts schedules at the beginning (-1); "
                                  f"to continue a run use Global.checkpoint")
    g = raw.get("Global")
    if isinstance(g, dict) and g.get("device") in ("xpu", "npu"):
        notes.append(f"Global.device={g['device']}: plsc runs on gpu or cpu; running on cpu")
        g["device"] = "cpu"
    _fc_update(raw)
    _loss_model_parallel(raw)
    notes += _optimizer(raw)
    return notes


def _pop(raw, path):
    """(True, value) and the key removed when the mapping path exists in raw, else (False, None)."""
    *parents, key = path.split(".")
    node = raw
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and key in node:
        return True, node.pop(key)
    return False, None


def _section(raw, *keys):
    node = raw
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _fc_update(raw):
    pfc = _section(raw, "Model", "pfc_config")
    if pfc is None or "sparse_update" not in pfc:
        return
    sparse = check_key(PLSC_KEYS["Model.pfc_config.sparse_update"], pfc.pop("sparse_update"),
                       "Model.pfc_config.sparse_update")
    rows = "sampled" if sparse else "all"
    if pfc.get("update_rows", rows) != rows:
        raise ConfigError(f"Model.pfc_config.sparse_update={sparse} (update_rows: {rows}) disagrees with "
                          f"Model.pfc_config.update_rows={pfc['update_rows']}; set one of them")
    pfc["update_rows"] = rows


def _loss_model_parallel(raw):
    losses = _section(raw, "Loss")
    losses = losses.get("Train") if losses else None
    if not isinstance(losses, list):
        return
    pfc = _section(raw, "Model", "pfc_config") or {}
    parallel = pfc.get("model_parallel", SCHEMA["Model"]["pfc_config"]["model_parallel"].default)
    for i, item in enumerate(losses):
        if not isinstance(item, dict) or len(item) != 1:
            continue  # validation names the problem
        (name, kwargs), = item.items()
        if isinstance(kwargs, dict) and "model_parallel" in kwargs:
            path = f"Loss.Train.{i}.{name}.model_parallel"
            value = check_key(PLSC_KEYS["Loss.Train.0.<loss>.model_parallel"], kwargs.pop("model_parallel"), path)
            if value is not None and value != parallel:
                raise ConfigError(f"{path}={value} disagrees with Model.pfc_config.model_parallel={parallel}; "
                                  f"set both the same")


def _optimizer(raw):
    opt = _section(raw, "Optimizer")
    if opt is None or opt.get("name") != "AdamW":
        return []
    notes = []
    if "betas" in opt:
        betas = _parse_pair(check_key(PLSC_KEYS["Optimizer.betas"], opt.pop("betas"), "Optimizer.betas"))
        for name, value in zip(("beta1", "beta2"), betas):
            if opt.get(name) is not None and opt[name] != value:
                raise ConfigError(f"Optimizer.betas={betas} disagrees with Optimizer.{name}={opt[name]}")
            opt[name] = value
    if "eps" in opt:
        eps = check_key(PLSC_KEYS["Optimizer.eps"], opt.pop("eps"), "Optimizer.eps")
        if opt.get("epsilon") is not None and opt["epsilon"] != eps:
            raise ConfigError(f"Optimizer.eps={eps} disagrees with Optimizer.epsilon={opt['epsilon']}")
        opt["epsilon"] = eps
    if "exp_avg_force_fp32" in opt:
        if check_key(PLSC_KEYS["Optimizer.exp_avg_force_fp32"], opt.pop("exp_avg_force_fp32"),
                     "Optimizer.exp_avg_force_fp32"):
            notes.append("Optimizer.exp_avg_force_fp32 has no separate effect: AdamW's moments are fp32 whenever "
                         "the weights are (always on CPU; under FP16 O2 with use_master_param)")
    return notes


def _parse_pair(value):
    """[0.9, 0.999] from a list or PLSC's text "(0.9, 0.999)" (parsed as numbers, never evaluated)."""
    if isinstance(value, str):
        parts = value.strip().strip("()[]").split(",")
        try:
            value = [float(x) for x in parts]
        except ValueError:
            raise ConfigError(f"Optimizer.betas: {value!r} is not two numbers like (0.9, 0.999)") from None
    if len(value) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise ConfigError(f"Optimizer.betas: expected two numbers like (0.9, 0.999), got {value!r}")
    return [float(x) for x in value]
