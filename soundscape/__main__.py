from .cli import main

if __name__ == "__main__":  # not when multiprocessing re-imports this module in a worker
    main()
