"""``rerank index``: encode a corpus with a bi-encoder into a saved FAISS index folder (resumable, cached)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.cli.common import add_data_root, check_cache_writable, check_output_dir, int_between, positive_int
from rerank.errors import ConfigError, RerankError

if TYPE_CHECKING:
    from rerank.retrieval.dense import BiEncoder
    from rerank.retrieval.index import IndexConfig

log = logging.getLogger(__name__)


class _Renamed(argparse.Action):
    """A former flag (hidden from ``--help``): giving it is a one-line usage error naming the flag it became."""

    def __init__(self, option_strings: list[str], dest: str, now: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.now = now

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} is now {self.now} (one name for the token limits everywhere)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="encode a corpus into a dense FAISS index (for --retriever dense)")
    p.add_argument("--model", required=True, help="bi-encoder: sentence-transformers folder, HF model, or packaged name")
    p.add_argument("--dataset", required=True,
                   help="a BEIR-layout folder, a dataset name under the data root, or irds:ID (an ir_datasets id)")
    p.add_argument("--output", required=True, help="index folder to write (manifest, index.faiss, embeddings, ids)")
    add_data_root(p)
    g = p.add_argument_group("index")
    g.add_argument("--index-type", choices=["flat", "hnsw", "ivfpq"], default="flat",
                   help="FAISS index (default flat IP); each of the options below applies to one type only")
    # unset (None) unless given, so one given for an index type that does not read it is refused; the bounds are
    # FAISS's (rerank.retrieval.index.OPTION_RANGES)
    g.add_argument("--hnsw-m", type=int_between(2, None), default=None, help="hnsw: links per node, >= 2 (default 32)")
    g.add_argument("--ef-construction", type=positive_int, default=None, help="hnsw: build beam (default 200)")
    g.add_argument("--ef-search", type=positive_int, default=None,
                   help="hnsw: search beam stored in the index (default 128)")
    g.add_argument("--nlist", type=positive_int, default=None, help="ivfpq: IVF lists (default min(4*sqrt(n), n/39))")
    g.add_argument("--pq-m", type=positive_int, default=None,
                   help="ivfpq: PQ sub-quantizers, must divide dim (default <= 64)")
    g.add_argument("--pq-nbits", type=int_between(1, 24), default=None,
                   help="ivfpq: bits per PQ code, 1 to 24 (default 8); the corpus needs at least 2**bits documents")
    g.add_argument("--nprobe", type=positive_int, default=None, help="ivfpq: IVF lists probed at search (default 16)")
    e = p.add_argument_group("encoder (default: as the model folder says)")
    e.add_argument("--pooling", choices=["cls", "mean", "last"], default=None)
    e.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None, help="L2-normalise embeddings")
    e.add_argument("--query-prefix", default=None, help="text put before each query (recorded for search)")
    e.add_argument("--doc-prefix", default=None, help="text put before each document")
    e.add_argument("--max-query-tokens", type=positive_int, default=None,
                   help="query token limit (recorded for search)")
    e.add_argument("--max-doc-tokens", type=positive_int, default=None, help="document token limit")
    for flag, now in (("--query-max-length", "--max-query-tokens"), ("--doc-max-length", "--max-doc-tokens")):
        e.add_argument(flag, action=_Renamed, now=now)
    e.add_argument("--batch-size", type=positive_int, default=64, help="documents per forward pass (default 64)")
    e.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    e.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="model dtype")
    e.add_argument("--runtime", choices=["torch", "onnx", "openvino"], default="torch",
                   help="what runs the encoder on the CPU: torch (default), onnx (ONNX Runtime) or openvino; the "
                        "export is cached (pip install 'rerank[onnx]' / 'rerank[openvino]')")
    e.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: dynamic int8 quantization (runtime onnx only; embeddings move a little)")
    e.add_argument("--shard-size", type=positive_int, default=8192, help="documents per resumable shard (default 8192)")
    e.add_argument(
        "--no-cache", action="store_true",
        help="encode into OUTPUT/.encoding instead of the shared embedding cache (still resumable)",
    )
    e.add_argument("--workers", type=positive_int, default=1,
                   help="encoding processes, each with its own copy of the model and cores/N threads (with GPUs: one "
                        "per GPU); the embeddings are those of one process (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the model's loading bar included)")
    p.set_defaults(func=run)


def index_config(args: argparse.Namespace) -> IndexConfig:
    """The index options given on the command line; one the ``--index-type`` does not read is an error naming it."""
    from rerank.retrieval.index import INDEX_TYPE_OPTIONS, IndexConfig

    given = {name: getattr(args, name) for name in IndexConfig.__dataclass_fields__
             if name != "index_type" and getattr(args, name) is not None}
    unused = [name for name in given if name not in INDEX_TYPE_OPTIONS[args.index_type]]
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        users = sorted({t for t, names in INDEX_TYPE_OPTIONS.items() for name in unused if name in names})
        raise ConfigError(f"{flags} appl{'ies' if len(unused) == 1 else 'y'} to --index-type {' / '.join(users)} "
                          f"only, not {args.index_type}: drop {'it' if len(unused) == 1 else 'them'} or change "
                          "--index-type")
    return IndexConfig(index_type=args.index_type, **given)


def check_runtime_flags(args: argparse.Namespace) -> None:
    """Before the model loads: ``--quantize``, ``--dtype`` and ``--device`` fit ``--runtime`` (a one-line error
    naming the flags), and the runtime's package is installed."""
    from rerank.runtime import check_runtime

    if args.quantize == "int8" and args.runtime != "onnx":
        raise ConfigError(f"--quantize int8 needs --runtime onnx (--runtime {args.runtime} runs the model as it is "
                          "stored): add --runtime onnx, or drop --quantize")
    if args.runtime != "torch":
        if args.dtype not in (None, "float32"):
            raise ConfigError(f"--dtype {args.dtype} applies to --runtime torch: --runtime {args.runtime} exports the "
                              "float32 model; drop --dtype, or drop --runtime")
        if args.device is not None and not str(args.device).startswith("cpu"):
            raise ConfigError(f"--device {args.device} applies to --runtime torch: --runtime {args.runtime} runs on "
                              "the CPU; drop --device, or drop --runtime")
    check_runtime(args.runtime, args.quantize, args.device, args.dtype)


def check_token_flags(args: argparse.Namespace, shape: BiEncoder) -> None:
    """Before the weights load: ``--max-query-tokens`` / ``--max-doc-tokens`` within what the model's position
    embeddings encode (``shape``: the model built without its weights), else a one-line error naming the flag."""
    from rerank.backends.transformers import position_limit

    for flag, value, model in (("--max-query-tokens", args.max_query_tokens, shape.query_model),
                               ("--max-doc-tokens", args.max_doc_tokens, shape.doc_model)):
        limit = position_limit(model)
        if value is not None and limit is not None and value > limit:
            raise ConfigError(f"{flag} {value} exceeds the limit of {args.model}, {limit} tokens (its position "
                              f"embeddings): give {flag} {limit} or less")


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """transformers' progress bars (the model's "Loading weights") shown or not in the block, as before after it."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not shown:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not shown:
            hf_logging.enable_progress_bar()


def run(args: argparse.Namespace) -> int:
    from rerank.data.datasets import resolve_dataset
    from rerank.models import check_model_path
    from rerank.retrieval.dense import BiEncoder
    from rerank.retrieval.index import DenseIndex, check_index_folder, encode_corpus_cached

    t0 = time.perf_counter()
    check_output_dir(args.output)
    cfg = index_config(args)
    check_index_folder(Path(args.output))  # saving replaces the folder: refuse one holding other files first
    check_model_path(args.model)
    if not args.no_cache or args.runtime != "torch":  # the embedding cache; an ONNX / OpenVINO export's
        check_cache_writable()
    check_runtime_flags(args)
    dataset = resolve_dataset(args.dataset, args.data_root)
    settings = {"pooling": args.pooling, "normalize": args.normalize, "query_prefix": args.query_prefix,
                "doc_prefix": args.doc_prefix}
    # the model built without its weights: its token limits and dimension, checked before the weights load
    shape = BiEncoder.load(args.model, **settings, weights=False)
    check_token_flags(args, shape)
    cfg.check_dim(shape.dim)
    cfg.check_num_docs(dataset.corpus_size)  # an ivfpq index the corpus is too small to train
    with _progress_bars(not args.no_progress):
        encoder = BiEncoder.load(
            args.model, **settings, max_query_tokens=args.max_query_tokens, max_doc_tokens=args.max_doc_tokens,
            device=args.device, dtype=args.dtype, runtime=args.runtime, quantize=args.quantize,
        )
    out = Path(args.output)
    work = out / ".encoding"
    try:
        emb = encode_corpus_cached(
            encoder, dataset, cache=not args.no_cache, work_dir=work, shard_size=args.shard_size,
            batch_size=args.batch_size, progress=not args.no_progress, workers=args.workers,
        )
        t_enc = time.perf_counter() - t0
        model = Path(args.model).resolve() if Path(args.model).exists() else args.model
        index = DenseIndex.build(emb, encoder, cfg, model=str(model))
        index.save(out, embeddings_source=emb.path)
    except FileNotFoundError as e:
        # --no-cache: a build into the same folder that finished first swapped its index in, and with it removed
        # the .encoding work folder this one waited for and was reading
        if not args.no_cache or e.filename is None or work.resolve() not in Path(e.filename).resolve().parents:
            raise
        raise RerankError(f"{out}: another `rerank index` wrote this folder meanwhile and removed its work folder "
                          f"{work} that this build was reading ({Path(e.filename).name}); its index is in {out}: run "
                          "this command again to rebuild it with these options") from None
    if args.no_cache:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"indexed {len(index.ids)} documents ({index.dim}-d, {cfg.index_type}) with {args.model} in "
        f"{time.perf_counter() - t0:.1f}s (encoding or cache read {t_enc:.1f}s) -> {out}"
    )
    return 0
