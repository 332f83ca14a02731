# Shortcuts for the README's two commands.
.PHONY: run test

run:
	python3 project.py run

test:
	python3 project.py test
