// /docs: Swagger UI over the service's own openapi.json. A file of its own, not inline, so the
// page's Content-Security-Policy (api/guard.py DOCS_CSP) allows scripts from this origin only.
SwaggerUIBundle({
  url: document.getElementById("swagger-ui").dataset.url,
  dom_id: "#swagger-ui",
  deepLinking: true,
  defaultModelsExpandDepth: 0,
  tryItOutEnabled: false,
  validatorUrl: null, // never ask a validator elsewhere about the document
});
