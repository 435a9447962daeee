using Akka.Actor;
using LiveMigration.Shared.Model;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace LiveMigration.Coordinator.Api;

/// <summary>The JSON every refusal and error of the API has: <c>{"code": "...", "message": "..."}</c>.</summary>
public sealed record ApiError(string Code, string Message);

/// <summary>Codes of the API's own refusals (the saga's and the hosts' codes pass through as they are).</summary>
public static class ApiErrorCodes
{
    public const string Unauthorized = "UNAUTHORIZED";
    /// <summary>A valid token of a role that may not do this (a viewer asking for a change).</summary>
    public const string Forbidden = "FORBIDDEN";
    public const string BodyTooLarge = "BODY_TOO_LARGE";
    public const string BadRequest = "BAD_REQUEST";
    public const string Internal = "INTERNAL";
    public const string Unavailable = "UNAVAILABLE";
    public const string NotJson = "NOT_JSON";
    public const string ForeignHost = "FOREIGN_HOST";
    public const string MemberNotFound = "MEMBER_NOT_FOUND";
    public const string NoSuchAction = "NO_SUCH_ACTION";
    public const string RegionNotFound = "REGION_NOT_FOUND";
    public const string NoSuchPath = "NO_SUCH_PATH";
    public const string MethodNotAllowed = "METHOD_NOT_ALLOWED";
}

/// <summary>
/// What stands in front of every endpoint: the error shape (no stack trace ever reaches a response; the log gets
/// it), the request body limit, and the API token when one is configured.
/// </summary>
public static class ApiSecurity
{
    /// <summary>Far above any request the API takes (a migration of 64 disks is ~10 KiB).</summary>
    public const long MaxRequestBodyBytes = 64 * 1024;

    /// <summary>The API with one token, the operator's (see <see cref="UseApiSecurity(WebApplication, ApiTokens?)"/>).</summary>
    public static WebApplication UseApiSecurity(this WebApplication app, string? token) =>
        app.UseApiSecurity(token is null ? null : new ApiTokens(token));

    /// <summary>
    /// Adds, outermost first: the error handler, the body limit and (with <paramref name="tokens"/>) the token check on
    /// /api/* and /metrics; then the audit of every request that needs the operator role (when an
    /// <see cref="IApiAuditTrail"/> is registered), and inside it the role check, so refused attempts are recorded too.
    /// /healthz* and the dashboard's static files stay open: probes and the page's first load need no secret.
    /// </summary>
    public static WebApplication UseApiSecurity(this WebApplication app, ApiTokens? tokens)
    {
        var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("LiveMigration.Coordinator.Api");
        app.Use((context, next) => AnswerFailuresAsync(context, next, logger));
        app.Use(async (context, next) =>
        {
            if (context.Request.ContentLength > MaxRequestBodyBytes)
            {
                await WriteErrorAsync(context, StatusCodes.Status413PayloadTooLarge, ApiErrorCodes.BodyTooLarge,
                    $"the request body is {context.Request.ContentLength} bytes; the limit is {MaxRequestBodyBytes}");
                return;
            }
            if (context.Request.ContentLength is null && context.Request.Body.CanRead && HttpMethods.IsPost(context.Request.Method)
                && !await BufferChunkedBodyAsync(context))
            {
                await WriteErrorAsync(context, StatusCodes.Status413PayloadTooLarge, ApiErrorCodes.BodyTooLarge,
                    $"the request body is larger than {MaxRequestBodyBytes} bytes");
                return;
            }
            if (tokens is not null && NeedsToken(context.Request.Path))
            {
                // Requests without a valid token are not audited: anyone could fill the trail with them. The log has them.
                if (tokens.RoleOf(context.Request) is not { } role)
                {
                    context.Response.Headers.WWWAuthenticate = "Bearer";
                    var sent = context.Request.Headers.Authorization.Count > 0;
                    logger.LogInformation("{Method} {Path} from {Client} refused: {Problem}", context.Request.Method, context.Request.Path,
                        context.Connection.RemoteIpAddress, sent ? "token not accepted" : "no token");
                    await WriteErrorAsync(context, StatusCodes.Status401Unauthorized, ApiErrorCodes.Unauthorized,
                        sent ? "the API token was not accepted" : "this API needs a token: send Authorization: Bearer TOKEN (lsm: --token-file FILE or LSM_TOKEN)");
                    return;
                }
                context.Items[RoleItem] = role;
            }
            await next(context);
        });
        app.Use(async (context, next) =>
        {
            if (context.RequestServices.GetService<IApiAuditTrail>() is { } trail && NeedsToken(context.Request.Path)
                && ApiTokens.Required(context.Request) == ApiRole.Operator
                && !context.Request.Path.StartsWithSegments(ApiTokens.AuditPath, StringComparison.OrdinalIgnoreCase))
            {
                if (IsJoinOfANonMember(context))
                {
                    // The trail is a singleton of the cluster this Coordinator is asked to join: it cannot record before the
                    // join, and refusing would leave a seedless Coordinator outside for good. Its own log keeps the request.
                    logger.LogWarning("{Method} {Path} from {Client} ({Role}) carried out unaudited: this Coordinator is no cluster member yet, so " +
                                      "the audit trail cannot record it", context.Request.Method, context.Request.Path,
                        context.Connection.RemoteIpAddress, AuditedRoleName(context, tokens));
                    await next(context);
                }
                else
                    await Audit.AuditedRequest.RunAsync(context, AuditedRoleName(context, tokens), trail, next, logger);
            }
            else
                await next(context);
        });
        // Again inside the audit, so the outcome it records is the answer an endpoint's failure gets.
        app.Use((context, next) => AnswerFailuresAsync(context, next, logger));
        app.Use(async (context, next) =>
        {
            if (context.Items[RoleItem] is ApiRole sent && sent < ApiTokens.Required(context.Request))
            {
                await WriteErrorAsync(context, StatusCodes.Status403Forbidden, ApiErrorCodes.Forbidden,
                    $"this token is a viewer token: {context.Request.Method} {ApiText.Clip(context.Request.Path.ToString())} needs the operator token " +
                    "(a viewer reads: GET requests, event streams, metrics)");
                return;
            }
            // Without a token the API trusts whoever reaches loopback. A web page the operator opens could reach it
            // too: through DNS rebinding (its own name resolving to 127.0.0.1), which only a loopback Host header stops…
            if (tokens is null && !context.Request.Path.StartsWithSegments("/healthz") && !IsLoopbackHost(context.Request.Host))
            {
                await WriteErrorAsync(context, StatusCodes.Status403Forbidden, ApiErrorCodes.ForeignHost,
                    $"this API answers only to a loopback host name (127.0.0.1, localhost, [::1]) while it has no token; got Host '{context.Request.Host}'");
                return;
            }
            // …and through a plain form POST, which needs no CORS preflight; a POST of application/json does, and the
            // API answers none. So every POST to the API is JSON, with a body or without one ({}).
            if (HttpMethods.IsPost(context.Request.Method) && NeedsToken(context.Request.Path) && !IsJson(context.Request.ContentType))
            {
                await WriteErrorAsync(context, StatusCodes.Status415UnsupportedMediaType, ApiErrorCodes.NotJson,
                    "POST requests to the API carry Content-Type: application/json in UTF-8 (send {} when there is nothing to say)");
                return;
            }
            await next(context);
        });
        return app;
    }

    /// <summary><c>POST /api/cluster/join</c> on a Coordinator that is not an Up member of any cluster yet.</summary>
    private static bool IsJoinOfANonMember(HttpContext context) =>
        HttpMethods.IsPost(context.Request.Method)
        && context.Request.Path.Equals("/api/cluster/join", StringComparison.OrdinalIgnoreCase)
        && context.RequestServices.GetService<ActorSystem>() is { } system
        && Akka.Cluster.Cluster.Get(system).SelfMember.Status is not (Akka.Cluster.MemberStatus.Up or Akka.Cluster.MemberStatus.WeaklyUp);

    /// <summary>Where the token check leaves the request's role for the checks after it.</summary>
    private const string RoleItem = "lm.api-role";

    /// <summary>The role the audit trail records: the token's, or <c>no-token</c> when the API has none (it then answers loopback only).</summary>
    private static string AuditedRoleName(HttpContext context, ApiTokens? tokens) =>
        tokens is null ? "no-token" : context.Items[RoleItem] is ApiRole role ? ApiTokens.Name(role) : "unknown";

    /// <summary>Every failure as the API's JSON error; no stack trace ever reaches a response (the log gets it).</summary>
    private static async Task AnswerFailuresAsync(HttpContext context, RequestDelegate next, ILogger logger)
    {
        try
        {
            await next(context);
            await AnswerUnroutedAsync(context);
        }
        catch (BadHttpRequestException e) when (!context.Response.HasStarted)
        {
            // Malformed JSON, a body over the limit, a missing body: in our shape, and in the client's terms.
            var code = e.StatusCode == StatusCodes.Status413PayloadTooLarge ? ApiErrorCodes.BodyTooLarge : ApiErrorCodes.BadRequest;
            var message = e.StatusCode == StatusCodes.Status413PayloadTooLarge
                ? $"the request body is larger than {MaxRequestBodyBytes} bytes"
                : DescribeBadRequest(e);
            await WriteErrorAsync(context, e.StatusCode, code, message);
        }
        catch (Exception e) when (e is AskTimeoutException or TaskCanceledException && !context.RequestAborted.IsCancellationRequested && !context.Response.HasStarted)
        {
            logger.LogWarning(e, "{Method} {Path}: the cluster did not answer in time", context.Request.Method, context.Request.Path);
            await WriteErrorAsync(context, StatusCodes.Status503ServiceUnavailable, ApiErrorCodes.Unavailable,
                "the cluster did not answer in time (a singleton moving, a node away); try again");
        }
        catch (Exception e) when (!context.RequestAborted.IsCancellationRequested && !context.Response.HasStarted)
        {
            var trace = context.TraceIdentifier;
            logger.LogError(e, "{Method} {Path} failed (trace {Trace})", context.Request.Method, context.Request.Path, trace);
            await WriteErrorAsync(context, StatusCodes.Status500InternalServerError, ApiErrorCodes.Internal,
                $"internal error ({e.GetType().Name}); the Coordinator's log has the details under trace {trace}");
        }
    }

    /// <summary>
    /// What was wrong with the request, without the framework's words for it: those name the handler's parameter types
    /// (our classes, System.Int64) and suggest fixes to the API's developer ("did you mean to use a Service?").
    /// </summary>
    private static string DescribeBadRequest(BadHttpRequestException e)
    {
        if (e.InnerException is System.Text.Json.JsonException json) return ApiText.JsonProblem(json);
        return e.Message.Contains("body", StringComparison.OrdinalIgnoreCase)
            ? "this endpoint takes a JSON object in the request body; none was sent (or it was null)"
            : e.Message;
    }

    /// <summary>
    /// A path no endpoint has, or a method the path does not take, gets the API's error shape too: routing answers those
    /// with an empty body, which a client reading {code, message} cannot explain to its user.
    /// </summary>
    private static Task AnswerUnroutedAsync(HttpContext context)
    {
        var response = context.Response;
        if (response.HasStarted || response.ContentType is not null || !NeedsToken(context.Request.Path)) return Task.CompletedTask;
        return response.StatusCode switch
        {
            StatusCodes.Status404NotFound => WriteErrorAsync(context, StatusCodes.Status404NotFound, ApiErrorCodes.NoSuchPath,
                $"no API endpoint at {ApiText.Clip(context.Request.Path.ToString())}"),
            StatusCodes.Status405MethodNotAllowed => WriteErrorAsync(context, StatusCodes.Status405MethodNotAllowed, ApiErrorCodes.MethodNotAllowed,
                $"{ApiText.Clip(context.Request.Method)} is not taken at {ApiText.Clip(context.Request.Path.ToString())}"),
            _ => Task.CompletedTask,
        };
    }

    /// <summary>application/json in UTF-8 (RFC 8259): a charset the framework cannot decode would throw while the body is read.</summary>
    private static bool IsJson(string? contentType) =>
        Microsoft.Net.Http.Headers.MediaTypeHeaderValue.TryParse(contentType, out var media)
        && media.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)
        && (!media.Charset.HasValue || media.Charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase) || media.Charset.Equals("utf8", StringComparison.OrdinalIgnoreCase));

    private static bool IsLoopbackHost(HostString host) =>
        host.Host.Equals("localhost", StringComparison.OrdinalIgnoreCase)
        || (System.Net.IPAddress.TryParse(host.Host.Trim('[', ']'), out var address) && System.Net.IPAddress.IsLoopback(address));

    /// <summary>
    /// A body without a length (chunked) is read here up to the limit, so an oversized one gets the API's JSON 413;
    /// Kestrel's own limit, reached while an endpoint reads, would answer an empty 413.
    /// </summary>
    private static async Task<bool> BufferChunkedBodyAsync(HttpContext context)
    {
        var buffer = new MemoryStream();
        var chunk = new byte[8192];
        int read;
        while ((read = await context.Request.Body.ReadAsync(chunk, context.RequestAborted)) > 0)
        {
            if (buffer.Length + read > MaxRequestBodyBytes) return false;
            buffer.Write(chunk, 0, read);
        }
        buffer.Position = 0;
        context.Request.Body = buffer;
        context.Request.ContentLength = buffer.Length;
        return true;
    }

    public static bool NeedsToken(PathString path) =>
        path.StartsWithSegments("/api", StringComparison.OrdinalIgnoreCase) || path.StartsWithSegments("/metrics", StringComparison.OrdinalIgnoreCase);

    public static Task WriteErrorAsync(HttpContext context, int status, string code, string message)
    {
        context.Response.StatusCode = status;
        return context.Response.WriteAsJsonAsync(new ApiError(code, message));
    }
}
