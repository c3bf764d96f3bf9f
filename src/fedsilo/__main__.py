from fedsilo.cli import main

main()
