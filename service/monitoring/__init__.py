"""Real-world performance from clinician feedback: the statistics (performance.py, pure), the figures
per model and time window as the API and the report give them (summary.py), and the monthly PDF for
the clinical safety officer (report_pdf.py)."""
