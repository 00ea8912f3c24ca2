"""The report: Markdown for git and CI comments, the same page as one self-contained HTML file."""
