"""What plsc-eval and plsc-export do with a validated config."""
import json
import os

from plsc.errors import ConfigError


def _is_exported(path):
    return path.endswith(".onnx") or os.path.isfile(os.path.join(path, "inference.json")) \
        or path.endswith("inference.json")


def run_eval(cfg):
    """Evaluate every configured set with a checkpoint or an exported model (Paddle inference / ONNX)."""
    from plsc.distributed import init as init_distributed
    from plsc.engine.engine import Engine
    from plsc.engine.evaluation import Evaluator
    from plsc.engine.logger import setup_logger

    path = cfg["Global"]["pretrained_model"]
    if not path:
        raise ConfigError("plsc-eval needs the model to evaluate: -o Global.pretrained_model=<checkpoint dir, "
                          "exported inference dir or .onnx file>")
    if _is_exported(path):
        from plsc.inference import load_embedder

        rank, world_size = init_distributed()
        log = setup_logger(None, rank)
        evaluator = Evaluator(cfg, rank, world_size, log)
        embed_fn = load_embedder(path)
        run_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    else:
        engine = Engine(cfg, mode="eval")
        evaluator, embed_fn, rank, run_dir = engine.evaluator, engine.embed, engine.rank, engine.run_dir
    if not evaluator.enabled:
        raise ConfigError("nothing to evaluate: set DataLoader.Eval.dataset (e.g. {name: FaceBinDataset, "
                          "bin_path: lfw.bin}) and Metric.Eval")
    results = evaluator.run(embed_fn)
    if rank == 0:
        with open(os.path.join(run_dir, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


def run_export(cfg):
    """Export the backbone of Global.pretrained_model as configured in the Export section."""
    from plsc.engine.engine import Engine
    from plsc.export import export_model

    if not cfg["Global"]["pretrained_model"]:
        raise ConfigError("plsc-export needs the weights to export: -o Global.pretrained_model=<checkpoint dir>")
    engine = Engine(cfg, mode="export")
    if engine.rank != 0:
        return None
    e = cfg["Export"]
    out_dir = e["export_dir"] or os.path.join(engine.run_dir, "export")
    return export_model(engine.backbone, out_dir, export_type=e["export_type"],
                        input_shape=tuple(e["input_shape"]), opset_version=e["opset_version"], fp16=e["fp16"],
                        parity_check=e["parity_check"],
                        meta={"model_name": cfg["Model"]["name"], "embedding_size": cfg["Model"]["num_features"],
                              "source_config": cfg})
