// GET /docs: Swagger UI on the service's OpenAPI schema, from the service's own copy of Swagger UI
// (service/static/swagger, vendored: no CDN). A script file, not an inline one, because the page's
// Content-Security-Policy allows scripts from the service's origin only.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // Swagger UI would otherwise show a badge fetched from validator.swagger.io.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
