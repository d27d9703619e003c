from trustvision.cli import app

app()
