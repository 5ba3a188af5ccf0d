"""One thin module per `moderngpt2` command: parse its arguments, call one library function, print.

The library never imports these modules; `moderngpt2.cli` dispatches to them by name.
"""
