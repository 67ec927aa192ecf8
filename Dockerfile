# One image for every service; compose.yaml picks the service with its command
# (python -m ak_store | ak_dispatcher | ak_runner | ak_ingress).
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .
EXPOSE 9980
CMD ["python", "-m", "ak_ingress"]
