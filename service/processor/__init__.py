"""The processor: folds zns.events into OA state, writes snapshots and decisions."""
