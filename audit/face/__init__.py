"""The face: the command line (cli), what it prints (show), the HTML report and the demo project."""
