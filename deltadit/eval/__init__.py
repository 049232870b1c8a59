"""Offline evaluation on the embedded animal-silhouette model: FID, class accuracy, paired distance."""
