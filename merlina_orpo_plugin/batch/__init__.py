"""Batches: tokenised pairs laid out as rows (`packing`: padded, shared-prompt or packed, per `BatchLayout`),
the collator that makes them (`collator.ORPODataCollator`), built in the layout the speed plan chose, and
the batch it returns (`orpo_batch.ORPOBatch`: the tensors, moved by ``.to``, and the host-side facts)."""
