from shared.service import main

from .app import create_app

if __name__ == "__main__":
    main(create_app)
