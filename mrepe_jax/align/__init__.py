"""Cross-modal alignment (paper §3.2.2): alignment maps phi_{i->j} (eq 4, ``maps``) trained with
InfoNCE (eq 3, ``train.contrastive``) by ``train``, fitted maps as bundles (``mapped``), and
concepts carried across modalities (``transfer``)."""
