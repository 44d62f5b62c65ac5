"""Pictures of a registration: the evaluation figure, the 3D scene (`view3d`) and the animation (`animate`).

- `evaluation_figure`: the X-ray and the initial / final / HQ DRRs side by side with their metrics, an overlay of the
  final DRR's edges on the X-ray, and DRR - X-ray difference heat-maps (both rescaled to [0, 1]).
- `view3d`: the bone surface (marching cubes at 250 HU on a CT downsampled to about 100 voxels a side), the X-ray
  source, the detector plane textured with the DRR (or an X-ray) and the ray cone: a static PNG (matplotlib 3D) and
  a self-contained HTML page (inline data and a few lines of JavaScript on a <canvas>: drag to rotate, wheel to
  zoom; orthographic, so the detector texture maps exactly) with the PNG embedded below it.
- `animate`: a GIF of the DRR blended over the X-ray (X-ray in red, DRR in green and blue: aligned structures turn
  grey, misaligned ones coloured) at subsampled iterations, beside the loss curve.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from XrayToDRRLib.atomic import atomic_path, write_text
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.images import suffix_of, to_uint8
from XrayToDRRLib.pose import Pose

from . import results as R


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path, dpi: int = 100) -> Path:
    plt = _plt()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


# --- evaluation figure -------------------------------------------------------------------------------------------
def evaluation_figure(folder, output, gt_name: str = R.GT, title_suffix: str = "", metrics: dict | None = None,
                      pose_errors: dict | None = None) -> Path:
    from XrayToDRRLib.figures import overlay

    from .evaluate import image_metrics, read_png, unit

    folder = Path(folder)
    gt = read_png(folder / gt_name)
    names = [("init", R.INIT_IMAGE, "initial DRR"), ("final", R.FINAL_IMAGE, "final DRR"),
             ("hq", R.HQ_DRR, "HQ DRR")]
    drrs = [(k, read_png(folder / f), t) for k, f, t in names if (folder / f).exists()]
    metrics = metrics or {k: image_metrics(gt, img) for k, img, _ in drrs}
    plt = _plt()
    n = 1 + len(drrs)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 7.0), squeeze=False)
    axes[0, 0].imshow(to_uint8(gt), cmap="gray", vmin=0, vmax=255)
    axes[0, 0].set_title("X-ray (as registered)", fontsize=9)
    last = drrs[-1][1] if drrs else gt
    axes[1, 0].imshow(overlay(gt, last))
    axes[1, 0].set_title(f"{drrs[-1][2] if drrs else 'X-ray'} edges on X-ray", fontsize=9)
    for col, (key, img, title) in enumerate(drrs, start=1):
        m = metrics.get(key, {})
        axes[0, col].imshow(to_uint8(img), cmap="gray", vmin=0, vmax=255)
        axes[0, col].set_title(f"{title}\nNCC↑ {m.get('ncc', float('nan')):.3f}  SSIM↑ {m.get('ssim', float('nan')):.3f}"
                               f"\nNMI↑ {m.get('nmi', float('nan')):.3f}  MSE↓ {m.get('mse', float('nan')):.4f}",
                               fontsize=8)
        diff = unit(img) - unit(gt)
        im = axes[1, col].imshow(diff, cmap="RdBu_r", vmin=-1, vmax=1)
        axes[1, col].set_title(f"{title} - X-ray", fontsize=9)
    if drrs:
        fig.colorbar(im, ax=axes[1, 1:].tolist(), fraction=0.02, pad=0.01)
    for ax in axes.ravel():
        ax.axis("off")
    title = folder.resolve().name + (f" {title_suffix}" if title_suffix else "")
    if pose_errors:
        i, f = pose_errors["init"], pose_errors["final"]
        title += (f"\nmTRE {i['mtre_mm']:.2f} -> {f['mtre_mm']:.2f} mm,  mRPE {i['mrpe_mm']:.2f} -> "
                  f"{f['mrpe_mm']:.2f} mm,  rotation {i['rotation_deg']:.2f} -> {f['rotation_deg']:.2f} deg,  "
                  f"translation {i['translation_mm']:.2f} -> {f['translation_mm']:.2f} mm")
    fig.suptitle(title, fontsize=10)
    return _save_fig(fig, output)


def multiview_figure(folders: list, output, title: str = "", pose_errors: list | None = None) -> Path:
    """Every view of a multi-view result in one figure: a row per view with its X-ray, HQ DRR and the DRR's edges
    on the X-ray (with the view's NCC, and its pose errors when known)."""
    from XrayToDRRLib.figures import overlay

    from .evaluate import image_metrics, read_png

    plt = _plt()
    fig, axes = plt.subplots(len(folders), 3, figsize=(9.0, 3.1 * len(folders)), squeeze=False)
    for row, folder in enumerate(folders):
        folder = Path(folder)
        gt = read_png(folder / R.GT)
        drr = read_png(folder / (R.HQ_DRR if (folder / R.HQ_DRR).exists() else R.FINAL_IMAGE))
        ncc = image_metrics(gt, drr)["ncc"]
        label = f"{folder.name}: NCC {ncc:.3f}"
        if pose_errors and pose_errors[row]:
            e = pose_errors[row]
            label += f", mTRE {e['mtre_mm']:.2f} mm, depth {e['depth_mm']:+.2f} mm"
        for col, (img, name) in enumerate(((to_uint8(gt), "X-ray"), (to_uint8(drr), "DRR"),
                                           (overlay(gt, drr), "DRR edges on X-ray"))):
            axes[row, col].imshow(img, cmap="gray" if col < 2 else None, vmin=0 if col < 2 else None,
                                  vmax=255 if col < 2 else None)
            axes[row, col].set_title(label if col == 0 else name, fontsize=8, loc="left" if col == 0 else "center")
            axes[row, col].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_fig(fig, output)


# --- 3D scene -----------------------------------------------------------------------------------------------------
def bone_surface(volume: sitk.Image, level: float = 250.0, voxels_per_side: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(V,3) RAS vertices and (F,3) faces of the `level` HU iso-surface (skin at -300 HU if no bone)."""
    from skimage.measure import marching_cubes

    from XrayToDRRLib.volumes import array_ijk, ras_affine

    factors = [max(1, int(np.ceil(n / voxels_per_side))) for n in volume.GetSize()]
    small = sitk.BinShrink(volume, factors) if max(factors) > 1 else volume
    hu = array_ijk(small)
    for lvl in (level, -300.0):
        if hu.min() < lvl < hu.max():
            verts, faces, _, _ = marching_cubes(np.pad(hu, 1, constant_values=float(hu.min())), lvl)
            a = ras_affine(small)
            return (verts - 1) @ a[:3, :3].T + a[:3, 3], faces
    return np.zeros((0, 3)), np.zeros((0, 3), dtype=int)


def _decimate(faces: np.ndarray, limit: int) -> np.ndarray:
    if len(faces) <= limit:
        return faces
    return faces[np.linspace(0, len(faces) - 1, limit).astype(int)]


def view3d(volume: sitk.Image, pose: Pose | list[Pose], out_dir, image=None, renderer=None,
           name: str = "view3d") -> list[Path]:
    """Write `name`.png and `name`.html in `out_dir`: bone surface, source, textured detector, ray cone (for each
    pose of a list: every view of a multi-view result, `image` then a list too)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    poses = pose if isinstance(pose, (list, tuple)) else [pose]
    images = image if isinstance(image, (list, tuple)) else [image] * len(poses)
    views = []
    for pose, image in zip(poses, images):
        if image is None:
            from XrayToDRRLib.fast_render import FastRenderer

            renderer = renderer or FastRenderer(volume)
            scale = max(1.0, max(pose.height, pose.width) / 128)
            small = pose.with_detector(height=max(8, round(pose.height / scale)),
                                       width=max(8, round(pose.width / scale)))
            image = renderer.render(small, "hq")
        views.append((pose.source, pose.detector_corners(), image))
    verts, faces = bone_surface(volume)
    png = _scene_png(verts, faces, views, out_dir / f"{name}.png")
    html = _scene_html(verts, faces, views, png, out_dir / f"{name}.html")
    return [png, html]


def _scene_png(verts, faces, views, path: Path) -> Path:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    plt = _plt()
    fig = plt.figure(figsize=(8, 7))
    ax = fig.add_subplot(111, projection="3d")
    if len(faces):
        mesh = Poly3DCollection(verts[_decimate(faces, 20000)], alpha=0.35, facecolor=(0.93, 0.88, 0.75),
                                edgecolor="none")
        ax.add_collection3d(mesh)
    for k, (source, corners, image) in enumerate(views):
        # Detector textured with the image: a grid of (n+1) x (n+1) corner points, n x n facets.
        n = 48
        tex = _resize(to_uint8(image).astype(np.float64) / 255.0, n, n)
        u = np.linspace(0, 1, n + 1)
        c0, c1, c3 = corners[0], corners[1], corners[3]
        grid = c0 + u[None, :, None] * (c1 - c0) + u[:, None, None] * (c3 - c0)
        ax.plot_surface(grid[..., 0], grid[..., 1], grid[..., 2], facecolors=plt.cm.gray(tex), rstride=1, cstride=1,
                        shade=False, linewidth=0)
        ax.scatter(*source, color="red", s=40, label="X-ray source" if k == 0 else None)
        for c in corners:
            ax.plot(*np.stack([source, c]).T, color="orange", linewidth=0.8)
        centre = corners.mean(0)
        ax.plot(*np.stack([source, centre]).T, color="red", linewidth=0.8, linestyle="--")
    scene = [p for source, corners, _ in views for p in (corners, source[None])]
    pts = np.vstack([verts, *scene]) if len(verts) else np.vstack(scene)
    lo, hi = pts.min(0), pts.max(0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.set_box_aspect(hi - lo + 1e-6)
    ax.set_xlabel("R (mm)")
    ax.set_ylabel("A (mm)")
    ax.set_zlabel("S (mm)")
    ax.legend(loc="upper left")
    ax.set_title("C-arm pose: source, ray cone, detector (DRR) and bone surface", fontsize=10)
    return _save_fig(fig, path)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(img, dtype=np.float32))[None, None]
    mode = "area" if t.shape[-1] >= w and t.shape[-2] >= h else "bilinear"
    return F.interpolate(t, size=(h, w), mode=mode).numpy()[0, 0]


def _png_bytes(img_uint8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img_uint8).save(buf, format="PNG")
    return buf.getvalue()


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>xraytodrr view3d</title>
<style>body{font-family:sans-serif;margin:12px;background:#fafafa}canvas{border:1px solid #ccc;background:#fff;
cursor:grab}</style></head><body>
<h3>C-arm pose: X-ray source (red), ray cone (orange), detector with the DRR, bone surface</h3>
<p>Drag to rotate, mouse wheel to zoom. Axes: R (red), A (green), S (blue), 50 mm.</p>
<canvas id="c" width="820" height="640"></canvas>
<h4>Static view</h4><img alt="static view" src="data:image/png;base64,__PNG__">
<script>
const D = __DATA__;
const cv = document.getElementById('c'), g = cv.getContext('2d');
const texs = D.views.map(v => { const t = new Image(); t.src = 'data:image/png;base64,' + v.texture;
  t.onload = () => draw(); return t; });
let yaw = -0.6, pitch = 0.35, zoom = 1.0, drag = null;
const C = D.center;
function rot(p){ // world (RAS) -> view: yaw about S, then pitch about the screen x axis
  const x = p[0]-C[0], y = p[1]-C[1], z = p[2]-C[2];
  const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
  const x1 = cy*x - sy*y, y1 = sy*x + cy*y;
  return [x1, cp*z - sp*y1, sp*z + cp*y1];
}
function scr(v){ const s = zoom*D.scale; return [cv.width/2 + s*v[0], cv.height/2 - s*v[1], v[2]]; }
function P(p){ return scr(rot(p)); }
function draw(){
  g.setTransform(1,0,0,1,0,0); g.clearRect(0,0,cv.width,cv.height);
  const V = D.verts.map(P), L = [0.3,-0.5,0.8];
  const tris = D.faces.map(f => {
    const a = V[f[0]], b = V[f[1]], c = V[f[2]];
    const ux=b[0]-a[0], uy=b[1]-a[1], uz=b[2]-a[2], vx=c[0]-a[0], vy=c[1]-a[1], vz=c[2]-a[2];
    let nx=uy*vz-uz*vy, ny=uz*vx-ux*vz, nz=ux*vy-uy*vx; const nn=Math.hypot(nx,ny,nz)||1;
    const sh = Math.abs((nx*L[0]+ny*L[1]+nz*L[2])/nn);
    return {p:[a,b,c], z:(a[2]+b[2]+c[2])/3, s:0.35+0.65*sh};
  });
  const items = tris.map(t => ({z:t.z, f:() => {
    g.beginPath(); g.moveTo(t.p[0][0],t.p[0][1]); g.lineTo(t.p[1][0],t.p[1][1]); g.lineTo(t.p[2][0],t.p[2][1]);
    g.closePath(); const k = Math.round(255*t.s);
    g.fillStyle = `rgba(${k},${Math.round(k*0.93)},${Math.round(k*0.8)},0.85)`; g.fill(); }}));
  D.views.forEach((view, n) => { const K = view.corners.map(P), tex = texs[n];
  items.push({z:(K[0][2]+K[1][2]+K[2][2]+K[3][2])/4, f:() => {
    if (tex.complete && tex.width) {
      g.save(); g.globalAlpha = 0.95;
      g.setTransform((K[1][0]-K[0][0])/tex.width, (K[1][1]-K[0][1])/tex.width,
                     (K[3][0]-K[0][0])/tex.height, (K[3][1]-K[0][1])/tex.height, K[0][0], K[0][1]);
      g.drawImage(tex, 0, 0); g.restore();
    }
    g.strokeStyle = '#333'; g.beginPath(); g.moveTo(K[0][0],K[0][1]);
    for (const k of [1,2,3,0]) g.lineTo(K[k][0],K[k][1]); g.stroke(); }}); });
  items.sort((a,b) => b.z - a.z); // painter's algorithm: view depth grows away from the viewer, far first
  for (const it of items) it.f();
  for (const view of D.views) { const K = view.corners.map(P), S = P(view.source);
    g.strokeStyle = 'orange'; g.lineWidth = 1;
    for (const k of K) { g.beginPath(); g.moveTo(S[0],S[1]); g.lineTo(k[0],k[1]); g.stroke(); }
    g.fillStyle = 'red'; g.beginPath(); g.arc(S[0],S[1],5,0,2*Math.PI); g.fill(); }
  const O = P(C); [[50,0,0,'red'],[0,50,0,'green'],[0,0,50,'blue']].forEach(a => {
    const E = P([C[0]+a[0],C[1]+a[1],C[2]+a[2]]); g.strokeStyle = a[3]; g.lineWidth = 2;
    g.beginPath(); g.moveTo(O[0],O[1]); g.lineTo(E[0],E[1]); g.stroke(); });
  g.lineWidth = 1;
}
cv.onmousedown = e => { drag = [e.clientX, e.clientY]; };
window.onmouseup = () => { drag = null; };
window.onmousemove = e => { if (!drag) return; yaw += (e.clientX-drag[0])*0.01; pitch += (e.clientY-drag[1])*0.01;
  pitch = Math.max(-1.5, Math.min(1.5, pitch)); drag = [e.clientX, e.clientY]; draw(); };
cv.onwheel = e => { e.preventDefault(); zoom *= Math.exp(-e.deltaY*0.001); draw(); };
draw();
</script></body></html>
"""


def _scene_html(verts, faces, views, png_path: Path, path: Path) -> Path:
    faces = _decimate(faces, 6000)
    used = np.unique(faces) if len(faces) else np.zeros(0, dtype=int)
    remap = np.full(len(verts), -1)
    remap[used] = np.arange(len(used))
    scene = [p for source, corners, _ in views for p in (corners, source[None])]
    pts = np.vstack([verts[used], *scene]) if len(used) else np.vstack(scene)
    center = (pts.min(0) + pts.max(0)) / 2
    extent = float(np.max(np.linalg.norm(pts - center, axis=1))) or 1.0
    data = {
        "verts": np.round(verts[used], 1).tolist(), "faces": remap[faces].tolist() if len(faces) else [],
        "views": [{"source": np.round(source, 2).tolist(), "corners": np.round(corners, 2).tolist(),
                   "texture": base64.b64encode(_png_bytes(to_uint8(image))).decode("ascii")}
                  for source, corners, image in views],
        "center": np.round(center, 2).tolist(), "scale": 300.0 / extent,
    }
    data.update(data["views"][0])  # the first (or only) view also at the top level, as single-view pages had it
    page = _HTML.replace("__DATA__", json.dumps(data, separators=(",", ":"))).replace(
        "__PNG__", base64.b64encode(Path(png_path).read_bytes()).decode("ascii"))
    return write_text(path, page)


def view3d_file(volume, pose_path, out_dir, image_path=None, mask=None, labels=None, device="auto") -> list[Path]:
    from XrayToDRRLib.fast_render import FastRenderer
    from XrayToDRRLib.pose import load_pose
    from XrayToDRRLib.render import label_mask
    from XrayToDRRLib.volumes import read_labels, read_volume

    from .multiview import view_folders

    views = view_folders(pose_path)
    pose = [load_pose(v / R.POSE) for v in views] if views else load_pose(pose_path)
    ct = read_volume(volume)
    keep = label_mask(read_labels(mask, reference=ct), labels, mask) if mask else None
    image = None
    if image_path is not None:
        from XrayToDRRLib.xray import read_xray

        image = read_xray(image_path, sdd=1.0, pixel_spacing=1.0).pixels
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is a file", out, "give a folder for -o")
    return view3d(ct, pose, out, image=image, renderer=FastRenderer(ct, mask=keep, device=device))


# --- animation ------------------------------------------------------------------------------------------------------
def animate(renderer, params: dict, xray_image: np.ndarray, output, max_frames: int = 40, size: int = 160,
            frame_ms: int = 120) -> Path:
    """GIF of the DRR over the X-ray at up to `max_frames` iterations (evenly spaced, last included)."""
    output = Path(output)
    if suffix_of(output) != ".gif":
        raise InputError("animation output must be a .gif", output, "e.g. -o registration.gif")
    return _save_gif(_frames(renderer, params, xray_image, max_frames, size), output, frame_ms)


def animate_views(renderer, views: list[tuple[dict, np.ndarray]], output, max_frames: int = 40, size: int = 160,
                  frame_ms: int = 120) -> Path:
    """The views of a multi-view result side by side, frame by frame (they share one trajectory)."""
    from PIL import Image

    per_view = [_frames(renderer, params, xray, max_frames, size) for params, xray in views]
    frames = []
    for row in zip(*per_view):
        canvas = Image.new("RGB", (sum(f.width for f in row), max(f.height for f in row)), "white")
        x = 0
        for f in row:
            canvas.paste(f.convert("RGB"), (x, 0))
            x += f.width
        frames.append(canvas.convert("P", palette=Image.ADAPTIVE))
    return _save_gif(frames, Path(output), frame_ms)


def _save_gif(frames: list, output: Path, frame_ms: int) -> Path:
    with atomic_path(output) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return output


def _frames(renderer, params: dict, xray_image: np.ndarray, max_frames: int, size: int) -> list:
    from PIL import Image

    trajectory = params["trajectory"].numpy()
    losses = params["losses"].numpy()
    final = R.pose_from_entry(params["pose"])
    scale = max(1.0, max(final.height, final.width) / size)
    detector = final.with_detector(height=max(8, round(final.height / scale)), width=max(8, round(final.width / scale)))
    if len(trajectory) == 0:  # --init-only: the initial pose alone
        trajectory, losses = params["init_pose"].numpy()[None], np.array([np.nan])
    idx = np.unique(np.linspace(0, len(trajectory) - 1, min(len(trajectory), max_frames)).round().astype(int))
    poses = [Pose(trajectory[i], detector.sdd, detector.height, detector.width, detector.delx, detector.dely,
                  detector.x0, detector.y0) for i in idx]
    poses.append(dataclasses_replace(detector, final.world_from_camera))
    drrs = np.concatenate([renderer.render(poses[k:k + 8], "hq") for k in range(0, len(poses), 8)])
    xr = _resize(xray_image, detector.height, detector.width)
    xr8 = to_uint8(xr).astype(np.float64) / 255
    plt = _plt()
    frames = []
    labels = [f"iteration {i + 1}/{len(losses)}" for i in idx] + ["final (best) pose"]
    marks = list(idx) + [int(np.nanargmin(losses)) if np.isfinite(losses).any() else 0]
    for drr, label, mark in zip(drrs, labels, marks):
        d8 = to_uint8(drr).astype(np.float64) / 255
        rgb = np.stack([xr8, d8, d8], axis=-1)
        fig, (a0, a1) = plt.subplots(1, 2, figsize=(8, 3.8), gridspec_kw={"width_ratios": [1, 1.2]})
        a0.imshow(rgb)
        a0.set_title(f"{label}\nX-ray red, DRR cyan", fontsize=9)
        a0.axis("off")
        a1.plot(np.arange(1, len(losses) + 1), losses, color="0.3", linewidth=1)
        if np.isfinite(losses[mark]):
            a1.plot([mark + 1], [losses[mark]], "o", color="red")
        a1.set_xlabel("iteration")
        a1.set_ylabel("loss (- similarity)")
        a1.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=70)
        plt.close(fig)
        buf.seek(0)
        frames.append(Image.open(buf).convert("P", palette=Image.ADAPTIVE))
    return frames


def dataclasses_replace(detector: Pose, matrix) -> Pose:
    import dataclasses

    return dataclasses.replace(detector, world_from_camera=np.asarray(matrix, dtype=np.float64))


def animate_file(volume, parameters, output, mask=None, labels=None, device="auto", max_frames: int = 40) -> Path:
    """`xraytodrr animate`: read parameters.pt (and the gt.png beside it, else the X-ray named in its settings)."""
    from XrayToDRRLib.fast_render import FastRenderer
    from XrayToDRRLib.render import label_mask
    from XrayToDRRLib.volumes import read_labels, read_volume

    from .evaluate import read_png
    from .preprocess import prepare_xray

    from .multiview import view_folders

    output = Path(output)
    if suffix_of(output) != ".gif":
        raise InputError("animation output must be a .gif", output, "e.g. -o registration.gif")
    views = view_folders(parameters)
    if views:  # a multi-view result: every view side by side
        ct = read_volume(volume)
        keep = label_mask(read_labels(mask, reference=ct), labels, mask) if mask else None
        return animate_views(FastRenderer(ct, mask=keep, device=device),
                             [(R.read_parameters(v / R.PARAMETERS), read_png(v / R.GT)) for v in views], output,
                             max_frames)
    params = R.read_parameters(parameters)
    folder = Path(parameters) if Path(parameters).is_dir() else Path(parameters).parent
    settings = params.get("settings", {}) or {}
    if (folder / R.GT).exists():
        xray = read_png(folder / R.GT)
    else:
        s = settings
        xray = prepare_xray(s.get("xray"), s.get("sdd"), s.get("pixel_spacing"), s.get("reducefn", "max"),
                            s.get("crop", 0), s.get("subtract_background", False), s.get("linearize", False),
                            "none").image
    ct = read_volume(volume)
    keep = label_mask(read_labels(mask, reference=ct), labels, mask) if mask else None
    return animate(FastRenderer(ct, mask=keep, device=device), params, xray, output, max_frames)
