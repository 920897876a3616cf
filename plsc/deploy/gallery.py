"""An enrolled gallery of identities on faiss, saved with what it takes to trust it.

    g = Gallery.create(fingerprint, index="flat")           # or "hnsw", "ivf"
    g.add("alice", embeddings)                              # [k, D] L2-normalised; one template or several rows
    g.remove("alice")
    hits = g.search(queries, top_k=5)                       # per query: [(identity, score), ...]
    g.save("gallery.faiss"); g = Gallery.load("gallery.faiss")

Files: INDEX (faiss.write_index) and INDEX.json beside it: the identity of every vector id, the model's
fingerprint (embedding size and its embeddings of fixed probe images, plsc.deploy.model), the index
kind and the sha256 of the index file (a sidecar that does not belong to the index, or a corrupt
index, is refused). Both are written to temporary names first and then renamed.

Index kinds (all inner product on L2-normalised vectors = cosine similarity, inside IndexIDMap2 so
vectors carry identity ids and can be removed):
    flat   IndexFlatIP: exact (the default)
    hnsw   IndexHNSWFlat, M=32, efConstruction=80, efSearch=256 (`search_param`): approximate, no
           training. faiss cannot delete from an HNSW graph, so `remove` rebuilds it from the stored vectors
    ivf    IndexIVFFlat, nlist = 2 sqrt(n) (at most 65536 and n / 39) trained on at most 64 x nlist of
           the first build's vectors, nprobe = nlist / 4 (`search_param`): a quarter of the
           gallery is scanned per query; the recall figures are in docs/benchmarks.md
"""
import json
import os

import numpy as np

from plsc.errors import CheckpointError, DataError, PlscError
from plsc.io.checkpoint import sha256_file
from plsc.deploy.model import same_model

INDEX_KINDS = ("flat", "hnsw", "ivf")
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 256
SIDECAR_VERSION = 1


def _faiss():
    try:
        import faiss
    except ImportError:
        raise PlscError("plsc-search needs faiss: pip install faiss-cpu") from None
    return faiss


def default_search_param(kind, index):
    """efSearch of an HNSW index, nprobe of an IVF one (None for flat)."""
    if kind == "hnsw":
        return HNSW_EF_SEARCH
    if kind == "ivf":
        return max(1, _faiss().extract_index_ivf(index).nlist // 4)
    return None


def _apply_search_param(kind, index, value):
    faiss = _faiss()
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(value)
    elif kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(min(max(1, value), ivf.nlist))


def _new_index(kind, dim, train=None):
    faiss = _faiss()
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivf":
        n = 0 if train is None else len(train)
        if n < 39:
            raise DataError(f"--index ivf needs a gallery to train its lists on (at least 39 vectors, got {n}); "
                            f"use --index flat or hnsw for small galleries")
        nlist = int(max(1, min(65536, 2 * np.sqrt(n), n // 39)))
        sample = np.asarray(train)
        if n > 64 * nlist:
            sample = sample[np.random.default_rng(0).choice(n, 64 * nlist, replace=False)]
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.train(np.ascontiguousarray(sample, np.float32))
        inner.nprobe = max(1, nlist // 4)  # faiss's Python wrapper keeps the quantizer alive
    else:
        raise PlscError(f"--index {kind!r}: expected one of {', '.join(INDEX_KINDS)}")
    return faiss.IndexIDMap2(inner)


class Gallery:
    def __init__(self, index, info):
        self.index, self.info = index, info

    # ------------------------------------------------------------------ create / persist
    @classmethod
    def create(cls, fingerprint, index="flat", train=None, model=None):
        if index not in INDEX_KINDS:
            raise PlscError(f"--index {index!r}: expected one of {', '.join(INDEX_KINDS)}")
        dim = int(fingerprint["embedding_size"])
        info = {"version": SIDECAR_VERSION, "kind": index, "embedding_size": dim, "fingerprint": fingerprint,
                "model": model, "next_id": 0, "ids": {}}
        g = cls(_new_index(index, dim, train), info)
        g.set_search_param(None)
        return g

    @classmethod
    def load(cls, path):
        faiss = _faiss()
        path = os.fspath(path)
        side = path + ".json"
        if not os.path.isfile(path):
            raise CheckpointError(f"index not found: {path}")
        try:
            with open(side) as f:
                info = json.load(f)
            int(info["embedding_size"]), dict(info["ids"]), info["fingerprint"]["probe"]
        except FileNotFoundError:
            raise CheckpointError(f"{path}: its identity list {side} is missing (written by plsc-search build)") \
                from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{side}: not a readable plsc gallery file ({type(e).__name__}: {e})") from None
        digest = sha256_file(path)
        if info.get("sha256") != digest:
            raise CheckpointError(f"{path}: the index file does not match its identity list {side} (sha256 "
                                  f"differs: corrupt, truncated or replaced); rebuild it with plsc-search build")
        try:
            index = faiss.read_index(path)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable faiss index ({str(e).strip().splitlines()[0][:200]})") \
                from None
        if index.d != int(info["embedding_size"]):
            raise CheckpointError(f"{path}: index of {index.d}-d vectors, its identity list says "
                                  f"{info['embedding_size']}")
        g = cls(index, info)
        g.set_search_param(info.get("search_param"))
        return g

    def set_search_param(self, value=None):
        """efSearch (hnsw) / nprobe (ivf); None: the default. Kept in the sidecar by save()."""
        kind = self.info["kind"]
        if kind == "flat":
            return
        value = default_search_param(kind, self.index) if value is None else int(value)
        _apply_search_param(kind, self.index, value)
        self.info["search_param"] = value

    def save(self, path):
        faiss = _faiss()
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise PlscError(f"{path}: the folder {directory} does not exist")
        tmp_index = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
        tmp_side = tmp_index + ".json"
        try:
            faiss.write_index(self.index, tmp_index)
            self.info["sha256"] = sha256_file(tmp_index)
            with open(tmp_side, "w") as f:
                json.dump(self.info, f)
            os.replace(tmp_index, path)
            os.replace(tmp_side, path + ".json")
        finally:
            for t in (tmp_index, tmp_side):
                if os.path.exists(t):
                    os.remove(t)

    # ------------------------------------------------------------------ identities
    @property
    def identities(self):
        return sorted(set(self.info["ids"].values()))

    def check_model(self, fingerprint, what="the model"):
        ok, why = same_model(self.info["fingerprint"], fingerprint)
        if not ok:
            raise CheckpointError(f"the gallery was built with another model than {what} ({why}); query it with the "
                                  f"model it was built with ({self.info.get('model')}) or rebuild it")

    def add(self, identity, embeddings):
        x = np.ascontiguousarray(np.atleast_2d(embeddings), np.float32)
        if x.shape[1] != self.index.d:
            raise DataError(f"identity {identity!r}: {x.shape[1]}-d embeddings for a {self.index.d}-d gallery")
        if identity in self.info["ids"].values():
            raise DataError(f"identity {identity!r} is already in the gallery (remove it first)")
        start = int(self.info["next_id"])
        ids = np.arange(start, start + len(x), dtype=np.int64)
        self.index.add_with_ids(x, ids)
        self.info["next_id"] = start + len(x)
        for i in ids:
            self.info["ids"][str(int(i))] = identity

    def remove(self, identity):
        ids = [int(k) for k, v in self.info["ids"].items() if v == identity]
        if not ids:
            raise DataError(f"identity {identity!r} is not in the gallery")
        if self.info["kind"] == "hnsw":  # faiss's HNSW cannot delete: rebuild from the stored vectors
            keep = sorted(int(k) for k, v in self.info["ids"].items() if v != identity)
            vectors = np.stack([self.index.reconstruct(i) for i in keep]) if keep else \
                np.zeros((0, self.index.d), np.float32)
            self.index = _new_index("hnsw", self.index.d)
            self.set_search_param(self.info.get("search_param"))
            if keep:
                self.index.add_with_ids(vectors, np.asarray(keep, np.int64))
        else:
            self.index.remove_ids(np.asarray(ids, np.int64))
        for i in ids:
            del self.info["ids"][str(i)]
        return len(ids)

    def search(self, queries, top_k=5):
        """Per query row: [(identity, cosine score), ...] best first, one entry per identity."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if q.shape[1] != self.index.d:
            raise DataError(f"{q.shape[1]}-d queries for a {self.index.d}-d gallery")
        top_k = max(1, int(top_k))
        return [self._search_one(row[None], top_k) for row in q]

    def _search_one(self, q, top_k):
        """Several vectors may share an identity (--per-image): widen k until top_k identities are found."""
        ids_of = self.info["ids"]
        k = min(self.index.ntotal, top_k)
        while k:
            scores, ids = self.index.search(q, k)
            hits, seen = [], set()
            for s, i in zip(scores[0], ids[0]):
                name = ids_of.get(str(int(i))) if i >= 0 else None
                if name is None or name in seen:
                    continue
                seen.add(name)
                hits.append((name, float(s)))
            if len(hits) >= top_k or k >= self.index.ntotal:
                return hits[:top_k]
            k = min(self.index.ntotal, 4 * k)
        return []
