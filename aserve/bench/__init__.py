"""`aserve-bench`: aserve and its installed peers under the same load, side by side.

The apps every server runs, the peers' command lines, the scenarios, the load generators
(wrk, or a built-in uvloop one), the statistics and the report each live in their own module.
"""
