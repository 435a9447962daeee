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
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(30);
    private readonly HttpClient _http;

    public LsmApiClient(Uri baseAddress, string? token = null)
    {
        BaseAddress = baseAddress;
        HasToken = token is not null;
        _http = new HttpClient { BaseAddress = baseAddress, Timeout = RequestTimeout };
        if (token is not null)
            _http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
    }

    public bool HasToken { get; }

    public Uri BaseAddress { get; }

    public Task<ApiResponse> GetAsync(string path, CancellationToken ct) =>
        SendAsync(() => new HttpRequestMessage(HttpMethod.Get, path), ct);

    public Task<ApiResponse> PostAsync(string path, object? body, CancellationToken ct) =>
        SendAsync(() => new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body ?? new { }) }, ct);

    private async Task<ApiResponse> SendAsync(Func<HttpRequestMessage> request, CancellationToken ct)
    {
        using var message = request();
        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(message, ct);
        }
        catch (HttpRequestException e) when (e.InnerException is SocketException || e.HttpRequestError is HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError)
        {
            throw new CliFailure(ExitCodes.ApiUnreachable, $"cannot reach the Coordinator API at {BaseAddress} ({e.Message}); is the cluster up? (--api URL or LSM_API)");
        }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new CliFailure(ExitCodes.ApiUnreachable, $"the Coordinator API at {BaseAddress} did not answer within {RequestTimeout.TotalSeconds:0} s");
        }
        using (response)
        {
            var text = await response.Content.ReadAsStringAsync(ct);
            var json = Parse(text);
            if (response.IsSuccessStatusCode)
                return new ApiResponse(json, text);
            var detail = json.ValueKind == JsonValueKind.Object && json.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.String
                ? (json.TryGetProperty("code", out var c) && c.ValueKind == JsonValueKind.String ? $"{c.GetString()}: " : "") + m.GetString()
                : $"{(int)response.StatusCode} {response.ReasonPhrase}";
            if (response.StatusCode == HttpStatusCode.Unauthorized)
                throw CliFailure.BadUsage(HasToken
                    ? $"the Coordinator API at {BaseAddress} did not accept the token (--token or LSM_TOKEN)"
                    : $"the Coordinator API at {BaseAddress} needs a token: pass --token TOKEN or set LSM_TOKEN");
            var code = response.StatusCode == HttpStatusCode.BadRequest ? ExitCodes.BadUsage : ExitCodes.OperationFailed;
            throw new CliFailure(code, $"{message.Method} {message.RequestUri}: {(int)response.StatusCode} {detail}");
        }
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

    public void Dispose() => _http.Dispose();
}
