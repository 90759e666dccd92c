"""The baseline zoo: hand-designed CTR models (LR, FM, DNN, DLRM, DeepFM, DCNv2, AutoInt+, xDeepFM,
Wide & Deep, IPNN, DCN, FinalMLP).

Every model takes `(num_dense, table_sizes, **hparams)`, looks its sparse fields up in a
`FieldEmbedding` (sparse gradients) and maps dense [B, D] float32 and sparse ids [B, S] int64 to
logits [B], like nasrec's own standalone models, so that both train and are costed the same way.
"""

from nasrec.zoo.registry import ZOO_MODELS, ZooCost, build_zoo_model, default_hparams, zoo_cost

__all__ = ["ZOO_MODELS", "ZooCost", "build_zoo_model", "default_hparams", "zoo_cost"]
