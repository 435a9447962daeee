using System.Text;
using System.Text.Json;
using LiveMigration.Coordinator.Api;
using LiveMigration.Shared.Protocol;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace LiveMigration.Coordinator.Audit;

/// <summary>
/// Carries out one request that changes something between its two audit records: "requested" is journaled before the
/// endpoint runs (a request the trail cannot record is not carried out: 503), "answered" with the status and the error
/// code once the endpoint has answered and before the answer leaves, so a client that asks the trail next sees it.
/// A Coordinator that dies in between leaves the request in the trail without an outcome.
/// </summary>
public static class AuditedRequest
{
    public static async Task RunAsync(HttpContext context, string role, IApiAuditTrail trail, RequestDelegate next, ILogger logger)
    {
        var requestId = Guid.NewGuid().ToString();
        var (body, truncated) = await ReadBodyAsync(context.Request, context.RequestAborted);
        var client = context.Connection.RemoteIpAddress?.ToString() ?? "unknown";
        try
        {
            await trail.RecordRequestAsync(new RecordAuditRequest(requestId, DateTimeOffset.UtcNow, role, client, context.Request.Method,
                context.Request.Path.ToString(), body, truncated), context.RequestAborted);
        }
        catch (Exception e) when (!context.RequestAborted.IsCancellationRequested)
        {
            logger.LogWarning(e, "{Method} {Path}: the audit trail did not record the request; refused", context.Request.Method, context.Request.Path);
            await ApiSecurity.WriteErrorAsync(context, StatusCodes.Status503ServiceUnavailable, ApiErrorCodes.Unavailable,
                "the audit trail did not record this request (its singleton moving, the journal away), so nothing was done; try again");
            return;
        }

        // The answer is held until its outcome is recorded: every such answer is a small JSON document.
        var answer = context.Features.Get<IHttpResponseBodyFeature>()!;
        var held = new MemoryStream();
        var holding = new StreamResponseBodyFeature(held, answer);
        context.Features.Set<IHttpResponseBodyFeature>(holding);
        int status;
        try
        {
            await next(context);
            await holding.CompleteAsync();
            status = context.Response.StatusCode;
        }
        catch
        {
            // Only a request its client gave up gets here (the error handler inside answers every other failure).
            await RecordOutcomeAsync(trail, requestId, StatusCodes.Status499ClientClosedRequest, "CLIENT_GONE", logger, context);
            throw;
        }
        finally
        {
            context.Features.Set(answer);
        }
        var bytes = held.ToArray();
        await RecordOutcomeAsync(trail, requestId, status, status >= 400 ? ErrorCodeOf(bytes) : null, logger, context);
        await context.Response.Body.WriteAsync(bytes, context.RequestAborted);
    }

    private static async Task RecordOutcomeAsync(IApiAuditTrail trail, string requestId, int status, string? errorCode, ILogger logger, HttpContext context)
    {
        try
        {
            await trail.RecordOutcomeAsync(new RecordAuditOutcome(requestId, DateTimeOffset.UtcNow, status, errorCode), CancellationToken.None);
        }
        catch (Exception e)
        {
            // The request was carried out: its answer goes out; the trail shows it without an outcome.
            logger.LogWarning(e, "{Method} {Path}: the audit trail did not record the outcome {Status} of request {RequestId}",
                context.Request.Method, context.Request.Path, status, requestId);
        }
    }

    /// <summary>The body as text, cut at <see cref="AuditLimits.MaxBodyChars"/>, and left readable for the endpoint.</summary>
    private static async Task<(string Body, bool Truncated)> ReadBodyAsync(HttpRequest request, CancellationToken ct)
    {
        // Bodies over the API's limit were refused before this point, so holding one whole is bounded.
        request.EnableBuffering();
        using var reader = new StreamReader(request.Body, Encoding.UTF8, detectEncodingFromByteOrderMarks: false, leaveOpen: true);
        var text = await reader.ReadToEndAsync(ct);
        request.Body.Position = 0;
        return text.Length > AuditLimits.MaxBodyChars ? (text[..AuditLimits.MaxBodyChars], true) : (text, false);
    }

    /// <summary>The <c>code</c> of the API's JSON error shape, or null when the answer has none.</summary>
    private static string? ErrorCodeOf(byte[] answer)
    {
        try
        {
            using var json = JsonDocument.Parse(answer);
            return json.RootElement.ValueKind == JsonValueKind.Object && json.RootElement.TryGetProperty("code", out var code)
                                                                      && code.ValueKind == JsonValueKind.String
                ? code.GetString()
                : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }
}
