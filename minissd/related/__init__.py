"""Related systems the SSDNeRF paper compares against: CodeNeRF and DiffRF, small baselines sharing minissd's renderer, data and code banks."""
