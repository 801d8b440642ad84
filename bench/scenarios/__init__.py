"""The bench's scenarios, one module each (two numbers where two share one set of rounds), in the
order they run; scenario numbers follow that order. Each module has NUMBERS, `run(fleet,
results)`, which measures and fills `results`, and `rows(results, row)`, which adds its rows to
the report. Before this package, run.py numbered them in another order; old -> new: 1->1,
10->2, 8->3, 9->4, 2->5, 3->6 (3b->6b, 3g->6g), 12->7, 4->8, 5->9 (5b->9b), 11->10, 6->11, 7->12."""

from scenarios import (aggregation, cache, edge, https, identity, latency, memory, pipelined_post, plain, protocols,
                       reuse, routing, tracing, traffic)

ALL = (plain, https, pipelined_post, latency, edge, tracing, aggregation, cache, memory, reuse, routing, identity,
       traffic, protocols)

# Numbered in the order they run: 1, 2, 3, ...
assert [n for s in ALL for n in s.NUMBERS] == list(range(1, 1 + sum(len(s.NUMBERS) for s in ALL)))
