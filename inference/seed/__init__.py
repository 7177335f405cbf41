"""The seed zoo: the five original apps' networks, import of their .h5 files, training and
evaluation. The serving runtime (the rest of ``inference``) never imports it."""
