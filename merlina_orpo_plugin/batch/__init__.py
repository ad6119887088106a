"""Batches: tokenised pairs laid out as rows (`packing`: padded, shared-prompt or packed, per `BatchLayout`)
and the collator that makes them (`collator.ORPODataCollator`), built in the layout the speed plan chose."""
