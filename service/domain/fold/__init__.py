"""The fold: how each record of `zns.events` changes the state of its OA (docs/rules.md).

`read_item` turns a record (kind, key, value, headers) into an `Item`, or
raises `Unprocessable` with the reason the processor puts in `zns.dlq`.
`fold(state, item, now, policy)` applies it and returns the changes that
become decision records; `fold_ahead` folds an admission not durable yet into a scratch
copy, for the next decision. The fold is deterministic: given the same state,
item and `now` it makes the same changes, which is what makes a replay equal
to live processing. It changes `state` in place (copying a large OA per record
would cost more than the rest of the work) and does no I/O.

Where each rule is:

- `decoding`: reading a record into an `Item`;
- `core`: the dispatch of a record to its rules, and bringing a state to `now`;
- `tier`: day changes, the tier evaluation, Zalo's quota values, the penalty, and what
  the day change forgets;
- `grants`: admissions, their idempotency entries, grant expiry and settling;
- `signals`: receipts, ratings, quick replies, and the OA's proxy levels;
- `templates`: template status and quality from Zalo, pauses and their ends;
- `sends`: send outcomes and the effect of each send error;
- `sync`: the values read from Zalo; `operator`: operator commands;
- `context`: the run of one record that all of them share.
"""

from service.domain.fold.core import advance, fold, fold_ahead
from service.domain.fold.decoding import Item, Unprocessable, read_item

__all__ = ["Item", "Unprocessable", "advance", "fold", "fold_ahead", "read_item"]
