"""What plsc-eval and plsc-export do with a validated config (their command lines are in plsc/cli/).

    run_eval(cfg, compare=None)   # every configured eval set; eval_results.json (+ eval_compare.json)
    run_export(cfg)               # the backbone as a Paddle inference model / ONNX, with its parity check

Both build only the model (plsc.engine.inference_model.load_model: config, device, backbone, weights), never the
Trainer. Global.pretrained_model is a checkpoint or, for plsc-eval, an exported model (plsc.io.exported decides).
"""
import os

from plsc.distributed import init as init_distributed
from plsc.engine.evaluation import Evaluator
from plsc.engine.inference_model import load_model
from plsc.engine.logger import setup_logger
from plsc.engine.preflight import check_owned_outputs
from plsc.errors import ConfigError, PlscError
from plsc.export import export_model
from plsc.inference import load_embedder
from plsc.io.checkpoint import load_json, save_json, sha256_file
from plsc.io.exported import META_FILE, MODEL_JSON, MODEL_PARAMS, ONNX_FILE, is_exported, model_folder
from plsc.metrics.evaluator import format_comparison

EXPORT_FILES = (MODEL_JSON, MODEL_PARAMS, ONNX_FILE, META_FILE)
RESULTS, RESULTS_MANIFEST, COMPARE = "eval_results.json", "eval_results.manifest.json", "eval_compare.json"


def eval_run_dir(cfg, path):
    """Where plsc-eval writes its results: beside an exported model, else <output_dir>/<Model.name>/."""
    return model_folder(path) if is_exported(path) else os.path.join(cfg["Global"]["output_dir"], cfg["Model"]["name"])


def run_eval(cfg, compare=None):
    """Evaluate every configured set with a checkpoint or an exported model (Paddle inference / ONNX).

    compare: a second model (checkpoint, exported dir or .onnx) evaluated on the same sets; one table of
    both (e.g. a released model and its fine-tuned version) is printed and written to eval_compare.json."""
    path = cfg["Global"]["pretrained_model"]
    if not path:
        raise ConfigError("plsc-eval needs the model to evaluate: -o Global.pretrained_model=<checkpoint dir, "
                          "exported inference dir or .onnx file>")
    run_dir = eval_run_dir(cfg, path)
    check_owned_outputs(run_dir, [RESULTS], (RESULTS_MANIFEST, _results_unchanged), "plsc-eval",
                        "the exported model's folder" if is_exported(path) else "Global.output_dir")
    if compare is not None and not (os.path.exists(compare)):
        raise ConfigError(f"--compare {compare}: no such model (a checkpoint dir, exported dir or .onnx file)")
    evaluator, embed_fn, rank = _model_for_eval(cfg, path)
    results = evaluator.run(embed_fn)
    if rank == 0:
        _write_results(run_dir, results)
    if compare is not None:
        other = dict(cfg, Global=dict(cfg["Global"], pretrained_model=compare))
        _, other_fn, _ = _model_for_eval(other, compare)
        other_results = evaluator.run(other_fn)
        if rank == 0:
            print(format_comparison(path, results, compare, other_results), flush=True)
            save_json(os.path.join(run_dir, COMPARE), {"models": [path, compare], "results": [results, other_results]},
                      sort_keys=False)
    return results


def _model_for_eval(cfg, path):
    """(evaluator, embed function, rank) of the model at `path`: an exported model as it is, a checkpoint as
    the config builds it."""
    if is_exported(path):
        rank, world_size = init_distributed()
        log = setup_logger(None, rank)
        embed_fn = load_embedder(path)
    else:
        model = load_model(cfg, "eval")
        rank, world_size, log, embed_fn = model.rank, model.world_size, model.log, model.embed
    evaluator = Evaluator(cfg, rank, world_size, log)
    if not evaluator.enabled:
        raise ConfigError("nothing to evaluate: set DataLoader.Eval.dataset (e.g. {name: FaceBinDataset, "
                          "bin_path: lfw.bin}) and Metric.Eval")
    return evaluator, embed_fn, rank


def _results_unchanged(manifest):
    """plsc-eval wrote the eval_results.json beside `manifest` and nobody changed it since."""
    try:
        info = load_json(manifest)
        return info.get("written_by") == "plsc-eval" and \
            info.get("sha256") == sha256_file(os.path.join(os.path.dirname(manifest), RESULTS))
    except (OSError, ValueError, AttributeError, PlscError):
        return False


def _write_results(run_dir, results):
    """eval_results.json and the manifest that marks it as plsc-eval's, each written whole, then renamed."""
    path = os.path.join(run_dir, RESULTS)
    save_json(path, results, sort_keys=False)
    save_json(os.path.join(run_dir, RESULTS_MANIFEST), {"written_by": "plsc-eval", "file": RESULTS,
                                                        "sha256": sha256_file(path)}, sort_keys=False)


def _export_meta(meta):
    """meta.json written by plsc-export (plsc.export._write_meta)."""
    try:
        info = load_json(meta)
        return isinstance(info, dict) and "plsc_version" in info and "export_type" in info and "files" in info
    except (OSError, PlscError):
        return False


def run_export(cfg):
    """Export the backbone of Global.pretrained_model as configured in the Export section."""
    if not cfg["Global"]["pretrained_model"]:
        raise ConfigError("plsc-export needs the weights to export: -o Global.pretrained_model=<checkpoint dir>")
    e = cfg["Export"]
    out_dir = e["export_dir"] or os.path.join(cfg["Global"]["output_dir"], cfg["Model"]["name"], "export")
    check_owned_outputs(out_dir, EXPORT_FILES, (META_FILE, _export_meta), "plsc-export", "Export.export_dir")
    model = load_model(cfg, "export")
    if model.rank != 0:
        return None
    return export_model(model.backbone, out_dir, export_type=e["export_type"],
                        input_shape=tuple(e["input_shape"]), opset_version=e["opset_version"], fp16=e["fp16"],
                        parity_check=e["parity_check"],
                        meta={"model_name": cfg["Model"]["name"], "embedding_size": cfg["Model"]["num_features"],
                              "source_config": cfg})
