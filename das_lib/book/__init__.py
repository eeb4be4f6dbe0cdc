"""What only the book needs: parameter checks, the chapter runner, figures, the paper's numbers."""
