using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;

namespace LiveMigration.Cli.Api;

/// <summary>A response of the Coordinator's API: its JSON as parsed and as sent (what <c>--json</c> prints).</summary>
public sealed record ApiResponse(JsonElement Json, string Text);

/// <summary>
/// The Coordinator's HTTP API as the CLI uses it. Failures become <see cref="CliFailure"/>s with the exit code
/// the operator's scripts expect: 3 when nothing answers, 2 when the API refused the input (400), 1 otherwise,
/// each with the API's own message.
/// </summary>
public sealed class LsmApiClient : IDisposable
{
    // Above the API's slowest answer (a VM create waits for the SPM, the host and the inventory, up to about a minute).
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(90);
    private readonly HttpClient _http;
    private readonly HttpClient _streams;

    private readonly ApiServerTrust _trust;

    public LsmApiClient(Uri baseAddress, string? token = null, ApiServerTrust? trust = null)
    {
        BaseAddress = baseAddress;
        HasToken = token is not null;
        _trust = trust ?? ApiServerTrust.SystemStore;
        _http = new HttpClient(_trust.Handler()) { BaseAddress = baseAddress, Timeout = RequestTimeout };
        // An event stream stays open as long as the operator watches: no overall timeout.
        _streams = new HttpClient(_trust.Handler()) { BaseAddress = baseAddress, Timeout = Timeout.InfiniteTimeSpan };
        if (token is not null)
            foreach (var client in new[] { _http, _streams })
                client.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
    }

    public bool HasToken { get; }

    public Uri BaseAddress { get; }

    public Task<ApiResponse> GetAsync(string path, CancellationToken ct) =>
        SendAsync(() => new HttpRequestMessage(HttpMethod.Get, path), ct);

    /// <summary>The frames of a server-sent-events stream (<c>event</c> name and <c>data</c>) as they arrive, until it ends or <paramref name="ct"/> fires.</summary>
    public async IAsyncEnumerable<(string Event, string Data)> StreamAsync(string path, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        using var message = new HttpRequestMessage(HttpMethod.Get, path);
        message.Headers.Accept.ParseAdd("text/event-stream");
        using var response = await ConnectAsync(() => _streams.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, ct), ct);
        if (!response.IsSuccessStatusCode)
            throw Failure(message, response, await response.Content.ReadAsStringAsync(ct));
        await using var body = await response.Content.ReadAsStreamAsync(ct);
        using var reader = new StreamReader(body);
        var name = "message";
        var data = new System.Text.StringBuilder();
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (line.Length == 0)
            {
                if (data.Length > 0) yield return (name, data.ToString());
                name = "message";
                data.Clear();
            }
            else if (line.StartsWith(':')) continue; // a comment: keep-alive
            else if (line.StartsWith("event:", StringComparison.Ordinal)) name = line[6..].Trim();
            else if (line.StartsWith("data:", StringComparison.Ordinal)) data.Append(data.Length > 0 ? "\n" : "").Append(line[5..].TrimStart());
        }
    }

    public Task<ApiResponse> PostAsync(string path, object? body, CancellationToken ct) =>
        SendAsync(() => new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body ?? new { }) }, ct);

    private async Task<ApiResponse> SendAsync(Func<HttpRequestMessage> request, CancellationToken ct)
    {
        using var message = request();
        using var response = await ConnectAsync(() => _http.SendAsync(message, ct), ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        if (response.IsSuccessStatusCode)
            return new ApiResponse(Parse(text), text);
        throw Failure(message, response, text);
    }

    private async Task<HttpResponseMessage> ConnectAsync(Func<Task<HttpResponseMessage>> send, CancellationToken ct)
    {
        try
        {
            return await send();
        }
        catch (HttpRequestException e) when (e.HttpRequestError == HttpRequestError.SecureConnectionError)
        {
            // Reached, but its certificate was refused (or it speaks no TLS): the operator's setting to fix, not a dead cluster.
            throw CliFailure.BadUsage($"no secure connection to the Coordinator API at {BaseAddress}: {_trust.LastRefusal ?? e.InnerException?.Message ?? e.Message}. " +
                                      "Trust the CA that issued the API's certificate with --ca-file FILE (PEM) or env LSM_CA_FILE");
        }
        catch (HttpRequestException e) when (e.InnerException is SocketException || e.HttpRequestError is HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError)
        {
            throw new CliFailure(ExitCodes.ApiUnreachable, $"cannot reach the Coordinator API at {BaseAddress} ({e.Message}); is the cluster up? (--api URL or LSM_API)");
        }
        catch (SocketException e)
        {
            // the connection broken as it was made (the Coordinator going away at that moment), not wrapped by HttpClient
            throw new CliFailure(ExitCodes.ApiUnreachable, $"cannot reach the Coordinator API at {BaseAddress} ({e.Message}); is the cluster up? (--api URL or LSM_API)");
        }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested)
        {
            // It was reached: what it was asked may still be under way, so this is a failed operation, not an unreachable API.
            throw new CliFailure(ExitCodes.OperationFailed,
                $"the Coordinator API at {BaseAddress} did not answer within {RequestTimeout.TotalSeconds:0} s; what it was asked may still complete (lsm vms, lsm migrations show where things are)");
        }
    }

    /// <summary>The API's refusal as the operator reads it, with the exit code scripts expect.</summary>
    private CliFailure Failure(HttpRequestMessage message, HttpResponseMessage response, string text)
    {
        var json = Parse(text);
        var detail = json.ValueKind == JsonValueKind.Object && json.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.String
            ? (json.TryGetProperty("code", out var c) && c.ValueKind == JsonValueKind.String ? $"{c.GetString()}: " : "") + m.GetString()
            : $"{(int)response.StatusCode} {response.ReasonPhrase}";
        if (response.StatusCode == HttpStatusCode.Unauthorized)
            return CliFailure.BadUsage(HasToken
                ? $"the Coordinator API at {BaseAddress} did not accept the token (--token-file FILE or LSM_TOKEN)"
                : $"the Coordinator API at {BaseAddress} needs a token: pass --token-file FILE or set LSM_TOKEN");
        // A viewer's token reaches the reads only: say which token was sent and what this request needs.
        if (response.StatusCode == HttpStatusCode.Forbidden && json.ValueKind == JsonValueKind.Object
            && json.TryGetProperty("code", out var forbidden) && forbidden.ValueKind == JsonValueKind.String && forbidden.GetString() == "FORBIDDEN")
            return CliFailure.BadUsage($"this token is a viewer token: {message.Method} {message.RequestUri} needs the operator token " +
                                       "(--token-file FILE or LSM_TOKEN; a local cluster's is DATA/api-token)");
        // A refusal (400 bad input, 404 unknown, 409 conflict, 413, 422 refused) is the operator's input: exit 2; the
        // server failing (5xx) is the operation failing: exit 1.
        var code = (int)response.StatusCode is >= 400 and < 500 ? ExitCodes.BadUsage : ExitCodes.OperationFailed;
        return new CliFailure(code, $"{message.Method} {message.RequestUri}: {(int)response.StatusCode} {detail}");
    }

    private static JsonElement Parse(string text)
    {
        if (string.IsNullOrWhiteSpace(text)) return default;
        try
        {
            using var document = JsonDocument.Parse(text);
            return document.RootElement.Clone();
        }
        catch (JsonException)
        {
            return default;
        }
    }

    public void Dispose()
    {
        _http.Dispose();
        _streams.Dispose();
    }
}
