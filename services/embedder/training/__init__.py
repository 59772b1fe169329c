"""Fine-tuning an embedding model with a triplet loss (``facesearch train``).

- ``data``: aligned crops of labelled photos, made once by the project's detector and cached;
  the split of identities into training and held-out ones;
- ``sampling``: batches of P persons x K photos;
- ``mining``: online batch-hard and semi-hard triplets, chosen on a batch's distance matrix;
- ``loss``: the triplet loss with a margin on unit vectors;
- ``augmentation``: flips, crop jitter, brightness and contrast (training only);
- ``loop``: the training run (frozen early blocks, Adam, checkpoints and resuming);
- ``evaluate``: VAL@FAR and ROC measures on held-out identities, before and after;
- ``export``: the fine-tuned network as a new version of the served model.
"""
