using LiveMigration.Coordinator.Hosts;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Api;

/// <summary>GET /api/hosts, POST /api/hosts/{id}/forget, GET /api/domains, POST /api/domains; and how a management refusal becomes an HTTP answer.</summary>
public static class HostEndpoints
{
    public sealed record CreateDomainBody(string? Name, string? Path, long CapacityBytes = 0);

    public static IEndpointRouteBuilder MapHostApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/hosts", (HttpContext http, CancellationToken ct) => Guard(async () =>
            Results.Ok(new { hosts = await ManagementService.From(http.RequestServices).HostsAsync(ct) })));
        app.MapPost("/api/hosts/{id}/forget", (string id, HttpContext http, CancellationToken ct) => Guard(async () =>
            Results.Ok(new { forgotten = id, vms = await ManagementService.From(http.RequestServices).ForgetHostAsync(id, ct) })));
        app.MapGet("/api/domains", (HttpContext http, CancellationToken ct) => Guard(async () =>
        {
            var snapshot = await ManagementService.From(http.RequestServices).InventoryAsync(ct);
            return Results.Ok(new { domains = snapshot.Domains.OrderBy(d => d.Name, StringComparer.Ordinal).Select(DomainJson) });
        }));
        app.MapPost("/api/domains", (CreateDomainBody body, HttpContext http, CancellationToken ct) => Guard(async () =>
        {
            var domain = await ManagementService.From(http.RequestServices).CreateDomainAsync(body.Name, body.Path, body.CapacityBytes, ct);
            return Results.Created($"/api/domains/{domain.Id}", DomainJson(domain));
        }));
        return app;
    }

    public static object DomainJson(Shared.Protocol.DomainReport d) => new
    {
        id = d.Id.ToString(), name = d.Name, kind = d.Kind, capacityBytes = d.CapacityBytes, usedBytes = d.UsedBytes,
        availableBytes = d.AvailableBytes, active = d.Active, unreachableFrom = d.UnreachableFrom ?? [],
    };

    /// <summary>Runs a management request; a refusal becomes <c>{code, message}</c> with the status its code calls for.</summary>
    public static async Task<IResult> Guard(Func<Task<IResult>> handle)
    {
        try
        {
            return await handle();
        }
        catch (OperationFailedException e)
        {
            return Results.Json(new { code = e.Code, message = e.Message }, statusCode: StatusFor(e.Code));
        }
    }

    public static int StatusFor(string code) => code switch
    {
        ErrorCodes.InvalidArgument or ErrorCodes.InvalidId or ErrorCodes.PathNotAllowed => StatusCodes.Status400BadRequest,
        _ when code.EndsWith("_NOT_FOUND", StringComparison.Ordinal) => StatusCodes.Status404NotFound,
        ErrorCodes.Conflict or ErrorCodes.VmNotRunning or MigrationErrorCodes.DiskBusy => StatusCodes.Status409Conflict,
        ErrorCodes.Timeout => StatusCodes.Status503ServiceUnavailable,
        _ => StatusCodes.Status422UnprocessableEntity,
    };
}
