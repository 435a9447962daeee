using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace LiveMigration.Coordinator.Dashboard;

/// <summary>
/// The operator's dashboard at <c>/</c>: one page, its stylesheet and its script, embedded in the Coordinator's
/// assembly so it is served wherever the Coordinator runs from (no wwwroot to find, nothing fetched from outside).
/// These files are open without the API token: they hold no data, and the page asks for the token itself.
/// </summary>
public static class DashboardEndpoints
{
    private const string ResourcePrefix = "LiveMigration.Coordinator.Dashboard.wwwroot.";

    private static readonly (string Path, string Resource, string ContentType)[] Files =
    [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/index.html", "index.html", "text/html; charset=utf-8"),
        ("/dashboard.css", "dashboard.css", "text/css; charset=utf-8"),
        ("/dashboard.js", "dashboard.js", "text/javascript; charset=utf-8"),
    ];

    public static IEndpointRouteBuilder MapDashboard(this IEndpointRouteBuilder app)
    {
        var assembly = typeof(DashboardEndpoints).Assembly;
        foreach (var (path, resource, contentType) in Files)
        {
            var content = Read(assembly, resource);
            app.MapGet(path, (HttpContext http) =>
            {
                // The page changes with the Coordinator's version; never let a browser keep an old script.
                http.Response.Headers.CacheControl = "no-cache";
                return Results.Bytes(content, contentType);
            });
        }
        return app;
    }

    private static byte[] Read(Assembly assembly, string resource)
    {
        using var stream = assembly.GetManifestResourceStream(ResourcePrefix + resource)
            ?? throw new InvalidOperationException($"the dashboard file {resource} is not embedded in {assembly.GetName().Name} (resource {ResourcePrefix + resource})");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
