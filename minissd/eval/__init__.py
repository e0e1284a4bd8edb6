"""Evaluation, notebook 08: image and geometry metrics (`metrics`), the paper's tables
(`evaluate`), and the one-stage vs two-stage experiments (`compare`)."""
