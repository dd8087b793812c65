"""The console's files (index.html, app.js and its modules, app.css), served at /ui by server/console.py."""
