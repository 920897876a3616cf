"""Face alignment: a similarity transform from 5 landmarks to the 112x112 ArcFace template.

    M = similarity_transform(landmarks)          # 2x3 matrix (rotation, uniform scale, translation)
    face = align_face(image_bgr, landmarks)      # uint8 [112, 112, 3], same channel order as the input

The transform is the least-squares similarity of Umeyama (1991), "Least-squares estimation of
transformation parameters between two point patterns": with centered points and the covariance
Sigma = dst^T src / n = U S V^T, R = U D V^T (D flips the last axis when det(Sigma) < 0, so R is a
proper rotation), scale = trace(S D) / var(src), t = mean(dst) - scale R mean(src).
"""
import cv2
import numpy as np

from plsc.errors import DataError

# Landmarks of the 112x112 ArcFace crop: left eye, right eye, nose tip, left / right mouth corner.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def umeyama(src, dst):
    """Least-squares similarity mapping src points [n, 2] onto dst [n, 2] -> 2x3 float64 matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[0] < 2:
        raise DataError(f"similarity transform needs two matching point sets [n>=2, d], "
                        f"got {src.shape} and {dst.shape}")
    n, dim = src.shape
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum() / n
    if not np.isfinite(var_s) or var_s <= 0:
        raise DataError(f"similarity transform: the landmarks {src.tolist()} are degenerate (all equal or not finite)")
    sigma = xd.T @ xs / n
    u, s, vt = np.linalg.svd(sigma)
    d = np.ones(dim)
    if np.linalg.det(sigma) < 0:
        d[-1] = -1.0
    rank = int(np.sum(s > 1e-12 * max(s[0], 1e-300)))
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(vt) < 0:
        # collinear points: choose the reflection-free solution explicitly
        d = np.ones(dim)
        d[-1] = -1.0
    elif rank == dim - 1:
        d = np.ones(dim)
    rot = u @ np.diag(d) @ vt
    scale = float(s @ d) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def similarity_transform(landmarks, template=ARCFACE_TEMPLATE):
    """2x3 matrix taking 5 image landmarks [5, 2] (x, y) to the template."""
    lmk = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if lmk.shape != template.shape:
        raise DataError(f"expected {template.shape[0]} (x, y) landmarks, got {lmk.shape[0]}")
    return umeyama(lmk, template)


def align_face(image, landmarks, size=112):
    """Warp `image` (H x W x C uint8) so its 5 landmarks land on the ArcFace template -> size x size crop."""
    if size != 112:
        template = ARCFACE_TEMPLATE * (size / 112.0)
    else:
        template = ARCFACE_TEMPLATE
    m = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, m, (size, size), borderValue=0.0)
