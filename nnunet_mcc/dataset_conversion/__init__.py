"""Dataset converters: BRATS 2015, PROMISE12 and 2D Podocyte tiles -> nnU-Net raw datasets."""
