"""From photos to answers: detection + five-point alignment, embeddings, a faiss gallery, calibrated thresholds.

    from plsc.deploy import Embedder, Gallery, calibrate

    emb = Embedder("export/model.onnx")                   # or an export dir, or a checkpoint dir + config=
    r = emb.embed(["alice1.jpg", "alice2.jpg"])           # r.embeddings [N, D] unit rows, r.status per input
    g = Gallery.create(emb.model.fingerprint())           # exact cosine search (faiss IndexFlatIP in IndexIDMap2)
    g.add("alice", r.embeddings.mean(0, keepdims=True))
    g.search(emb.embed(["who.jpg"]).embeddings, top_k=3)  # [[("alice", 0.83), ...]]
    g.save("gallery.faiss")

The console scripts plsc-embed, plsc-verify, plsc-calibrate and plsc-search are thin layers over these
(plsc/cli/deploy.py, plsc/cli/search.py); docs/deploy.md describes both.
"""
from plsc.deploy.calibrate import calibrate
from plsc.deploy.detect import FacePreparer
from plsc.deploy.embed import Embedder, EmbedResult
from plsc.deploy.gallery import Gallery
from plsc.deploy.model import RecognitionModel

__all__ = ["Embedder", "EmbedResult", "FacePreparer", "Gallery", "RecognitionModel", "calibrate"]
