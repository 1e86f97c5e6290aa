"""`python -m console`: the console on 127.0.0.1 (E2C_HOST) at CONSOLE_PORT (8000)."""

import uvicorn

from console.app import create_app
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.console_port,
                log_level="warning")
