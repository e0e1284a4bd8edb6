"""Geometry metrics of the generation table: Chamfer distance, coverage (COV) and
minimum matching distance (MMD) between point sets, and surface points of a density field.

    CD(P, Q) = mean_p min_q ||p - q||^2 + mean_q min_p ||q - p||^2      (squared distances)
    COV      = fraction of reference shapes that are the nearest neighbour (by CD) of at
               least one generated shape;   MMD = mean_ref min_gen CD   (PointFlow / DiffRF)

A field's surface is taken as the shell of the cells whose density exceeds a threshold
(`points_from_density`; evaluate.calibrate_threshold picks the threshold on training
scenes), not marching cubes.
"""
import torch
import torch.nn.functional as F


def chamfer_distance(p, q, chunk=4096):
    """Symmetric Chamfer distance of (N,3) and (M,3): sum of both mean SQUARED NN distances."""
    p, q = torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(q, dtype=torch.float32)
    if len(p) == 0 or len(q) == 0:
        raise ValueError("chamfer_distance: empty point set")

    def one_way(src, dst):
        return torch.cat([torch.cdist(src[i:i + chunk], dst).min(dim=1).values
                          for i in range(0, len(src), chunk)]) ** 2   # (len(src),)

    return float(one_way(p, q).mean() + one_way(q, p).mean())


def coverage_mmd(generated_sets, reference_sets):
    """COV and MMD (Chamfer) of generated shapes against reference shapes (lists of (P,3))."""
    D = torch.tensor([[chamfer_distance(g, r) for r in reference_sets] for g in generated_sets])
    nearest_ref = D.argmin(dim=1)                                      # (n_gen,)
    cov = len(set(nearest_ref.tolist())) / len(reference_sets)
    mmd = D.min(dim=0).values.mean().item()                           # over reference shapes
    return {"cov": cov, "mmd": mmd}


@torch.no_grad()
def points_from_density(density_fn, res=64, threshold=10.0, n_points=2048, bound=1.0,
                        generator=None, chunk=65536, device="cpu"):
    """Surface points of a density field by a density THRESHOLD (not marching cubes).

    density_fn(xyz (M,3)) -> (M,). Evaluate at res^3 cell centres in [-bound, bound]^3, mark
    cells with density > threshold, keep the shell (occupied cells with at least one of their
    6 neighbours empty; outside the grid counts as empty), and sample n_points uniformly
    inside random shell cells. Returns (n_points, 3), or (0, 3) if nothing is occupied.
    """
    return points_from_grid(density_grid(density_fn, res, bound, chunk, device), threshold,
                            n_points, bound, generator)


def density_grid(density_fn, res=64, bound=1.0, chunk=65536, device="cpu") -> torch.Tensor:
    """density_fn(xyz (M,3)) -> (M,) at the res^3 cell centres of [-bound, bound]^3:
    (res, res, res), indexed (x, y, z)."""
    h = 2 * bound / res
    c = -bound + (torch.arange(res, device=device, dtype=torch.float32) + 0.5) * h
    xyz = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)  # (res^3,3)
    sigma = torch.cat([density_fn(xyz[i:i + chunk]).reshape(-1) for i in range(0, len(xyz), chunk)])
    return sigma.reshape(res, res, res)


def points_from_grid(sigma: torch.Tensor, threshold=10.0, n_points=2048, bound=1.0,
                     generator=None) -> torch.Tensor:
    """points_from_density on a density grid already evaluated (density_grid), so several
    thresholds share one evaluation. sigma (res, res, res) -> (n_points, 3) or (0, 3)."""
    res, device = sigma.shape[0], sigma.device
    h = 2 * bound / res
    occ = sigma > threshold
    pad = F.pad(occ[None, None].float(), (1, 1, 1, 1, 1, 1))[0, 0]   # outside = empty
    all_nb = torch.ones_like(occ)
    for dim in range(3):
        for s in (0, 2):
            all_nb &= pad.narrow(dim, s, res).narrow((dim + 1) % 3, 1, res).narrow((dim + 2) % 3, 1, res) > 0
    shell = torch.nonzero(occ & ~all_nb)                               # (S,3) cell indices
    if len(shell) == 0:
        return torch.zeros(0, 3, device=device)
    pick = torch.randint(len(shell), (n_points,), generator=generator).to(device)
    jitter = torch.rand(n_points, 3, generator=generator).to(device)
    return -bound + (shell[pick].float() + jitter) * h
