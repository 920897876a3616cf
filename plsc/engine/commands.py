"""What plsc-eval and plsc-export do with a validated config."""
import json
import os

from plsc.engine.preflight import check_owned_outputs
from plsc.errors import ConfigError
from plsc.io.checkpoint import sha256_file

EXPORT_FILES = ("inference.json", "inference.pdiparams", "model.onnx", "meta.json")


def _export_meta(meta):
    """meta.json written by plsc-export (plsc.export._write_meta)."""
    try:
        with open(meta) as f:
            info = json.load(f)
        return isinstance(info, dict) and "plsc_version" in info and "export_type" in info and "files" in info
    except (OSError, ValueError):
        return False


def _is_exported(path):
    return path.endswith(".onnx") or os.path.isfile(os.path.join(path, "inference.json")) \
        or path.endswith("inference.json")


def run_eval(cfg, compare=None):
    """Evaluate every configured set with a checkpoint or an exported model (Paddle inference / ONNX).

    compare: a second model (checkpoint, exported dir or .onnx) evaluated on the same sets; one table of
    both (e.g. a released model and its fine-tuned version) is printed and written to eval_compare.json."""
    path = cfg["Global"]["pretrained_model"]
    if not path:
        raise ConfigError("plsc-eval needs the model to evaluate: -o Global.pretrained_model=<checkpoint dir, "
                          "exported inference dir or .onnx file>")
    run_dir = (path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))) if _is_exported(path) \
        else os.path.join(cfg["Global"]["output_dir"], cfg["Model"]["name"])
    check_owned_outputs(run_dir, [RESULTS], (RESULTS_MANIFEST, _results_unchanged), "plsc-eval",
                        "Global.output_dir" if not _is_exported(path) else "the exported model's folder")
    if compare is not None and not (os.path.exists(compare)):
        raise ConfigError(f"--compare {compare}: no such model (a checkpoint dir, exported dir or .onnx file)")
    evaluator, embed_fn, rank, run_dir = _model_for_eval(cfg, path, run_dir)
    results = evaluator.run(embed_fn)
    if rank == 0:
        _write_results(run_dir, results)
    if compare is not None:
        other = dict(cfg, Global=dict(cfg["Global"], pretrained_model=compare))
        _, other_fn, _, _ = _model_for_eval(other, compare, run_dir)
        other_results = evaluator.run(other_fn)
        if rank == 0:
            from plsc.metrics.evaluator import format_comparison

            table = format_comparison(path, results, compare, other_results)
            print(table, flush=True)
            _atomic_json(os.path.join(run_dir, "eval_compare.json"),
                         {"models": [path, compare], "results": [results, other_results]})
    return results


def _model_for_eval(cfg, path, run_dir):
    """(evaluator, embed function, rank, run dir) of the model at `path`."""
    from plsc.distributed import init as init_distributed
    from plsc.engine.engine import Engine
    from plsc.engine.evaluation import Evaluator
    from plsc.engine.logger import setup_logger

    if _is_exported(path):
        from plsc.inference import load_embedder

        rank, world_size = init_distributed()
        log = setup_logger(None, rank)
        evaluator = Evaluator(cfg, rank, world_size, log)
        embed_fn = load_embedder(path)
    else:
        engine = Engine(cfg, mode="eval")
        evaluator, embed_fn, rank, run_dir = engine.evaluator, engine.embed, engine.rank, engine.run_dir
    if not evaluator.enabled:
        raise ConfigError("nothing to evaluate: set DataLoader.Eval.dataset (e.g. {name: FaceBinDataset, "
                          "bin_path: lfw.bin}) and Metric.Eval")
    return evaluator, embed_fn, rank, run_dir


def _atomic_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


RESULTS, RESULTS_MANIFEST = "eval_results.json", "eval_results.manifest.json"


def _results_unchanged(manifest):
    """plsc-eval wrote the eval_results.json beside `manifest` and nobody changed it since."""
    try:
        with open(manifest) as f:
            info = json.load(f)
        return info.get("written_by") == "plsc-eval" and \
            info.get("sha256") == sha256_file(os.path.join(os.path.dirname(manifest), RESULTS))
    except (OSError, ValueError, AttributeError):
        return False


def _write_results(run_dir, results):
    """eval_results.json (written whole, then renamed) and the manifest that marks it as plsc-eval's."""
    path = os.path.join(run_dir, RESULTS)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    with open(os.path.join(run_dir, RESULTS_MANIFEST), "w") as f:
        json.dump({"written_by": "plsc-eval", "file": RESULTS, "sha256": sha256_file(path)}, f, indent=1)


def run_export(cfg):
    """Export the backbone of Global.pretrained_model as configured in the Export section."""
    from plsc.engine.engine import Engine
    from plsc.export import export_model

    if not cfg["Global"]["pretrained_model"]:
        raise ConfigError("plsc-export needs the weights to export: -o Global.pretrained_model=<checkpoint dir>")
    e = cfg["Export"]
    out_dir = e["export_dir"] or os.path.join(cfg["Global"]["output_dir"], cfg["Model"]["name"], "export")
    check_owned_outputs(out_dir, EXPORT_FILES, ("meta.json", _export_meta), "plsc-export", "Export.export_dir")
    engine = Engine(cfg, mode="export")
    if engine.rank != 0:
        return None
    return export_model(engine.backbone, out_dir, export_type=e["export_type"],
                        input_shape=tuple(e["input_shape"]), opset_version=e["opset_version"], fp16=e["fp16"],
                        parity_check=e["parity_check"],
                        meta={"model_name": cfg["Model"]["name"], "embedding_size": cfg["Model"]["num_features"],
                              "source_config": cfg})
