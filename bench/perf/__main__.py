from bench.perf.cli import main

main()
