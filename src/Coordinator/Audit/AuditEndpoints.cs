using System.Globalization;
using LiveMigration.Coordinator.Api;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace LiveMigration.Coordinator.Audit;

/// <summary>
/// <c>GET /api/audit?since=TIME&amp;before=NUMBER&amp;limit=N</c>: the recorded changes, newest first; <c>next</c> is the
/// <c>before</c> of the older page. Operator only (see <see cref="ApiTokens.Required"/>): entries carry request bodies.
/// </summary>
public static class AuditEndpoints
{
    public const int DefaultLimit = 50;

    public static IEndpointRouteBuilder MapAuditApi(this IEndpointRouteBuilder app)
    {
        app.MapGet(ApiTokens.AuditPath, async (HttpContext http, AuditRecorder recorder, CancellationToken ct) =>
        {
            if (!TryParseQuery(http.Request.Query, out var query, out var problem))
                return Results.Json(new ApiError(ErrorCodes.InvalidArgument, problem), statusCode: StatusCodes.Status400BadRequest);
            return Results.Ok(await recorder.PageAsync(query, ct));
        });
        return app;
    }

    public static bool TryParseQuery(IQueryCollection query, out GetAuditEntries parsed, out string problem)
    {
        parsed = new GetAuditEntries(null, null, DefaultLimit);
        problem = "";
        DateTimeOffset? since = null;
        long? before = null;
        var limit = DefaultLimit;
        if (query["since"].ToString() is { Length: > 0 } sinceText)
        {
            if (!DateTimeOffset.TryParse(sinceText, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at))
            {
                problem = $"since '{ApiText.Clip(sinceText)}' is not a time; expected ISO 8601 such as 2026-12-02T15:00:00Z";
                return false;
            }
            since = at;
        }
        if (query["before"].ToString() is { Length: > 0 } beforeText)
        {
            if (!long.TryParse(beforeText, NumberStyles.None, CultureInfo.InvariantCulture, out var number) || number < 1)
            {
                problem = $"before '{ApiText.Clip(beforeText)}' is not an entry number (the next of the page before: a whole number from 1)";
                return false;
            }
            before = number;
        }
        if (query["limit"].ToString() is { Length: > 0 } limitText
            && (!int.TryParse(limitText, NumberStyles.None, CultureInfo.InvariantCulture, out limit) || limit is < 1 or > AuditState.MaxPage))
        {
            problem = $"limit '{ApiText.Clip(limitText)}' must be a whole number from 1 to {AuditState.MaxPage}";
            return false;
        }
        parsed = new GetAuditEntries(since, before, limit);
        return true;
    }
}
