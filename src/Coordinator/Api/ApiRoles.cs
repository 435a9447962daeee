using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace LiveMigration.Coordinator.Api;

/// <summary>What a token may do: a viewer reads (GET: lists, event streams, metrics); an operator does everything.</summary>
public enum ApiRole
{
    Viewer,
    Operator,
}

/// <summary>
/// The API's tokens: the operator's (required for any token check) and, optionally, a viewer's. Which role a request
/// needs is decided here for every endpoint at once, so a new endpoint is covered without a line of its own: reads
/// (GET, HEAD) need a viewer, anything else an operator, and the audit trail (it shows request bodies) an operator.
/// </summary>
public sealed class ApiTokens
{
    private readonly byte[] _operator;
    private readonly byte[]? _viewer;

    public ApiTokens(string operatorToken, string? viewerToken = null)
    {
        if (string.IsNullOrWhiteSpace(operatorToken)) throw new ArgumentException("the operator's API token is empty");
        if (viewerToken is not null && string.IsNullOrWhiteSpace(viewerToken)) throw new ArgumentException("the viewer's API token is empty");
        if (viewerToken == operatorToken)
            throw new ArgumentException("the viewer token equals the operator token: a viewer would be an operator; give the viewer a token of its own");
        _operator = Hash(operatorToken);
        _viewer = viewerToken is null ? null : Hash(viewerToken);
    }

    public bool HasViewer => _viewer is not null;

    /// <summary>
    /// The role of the request's bearer token, or null when it carries none or an unknown one. Both tokens are compared,
    /// as hashes of equal length in constant time, so neither the content, the length nor which token matched leaks by timing.
    /// </summary>
    public ApiRole? RoleOf(HttpRequest request)
    {
        var header = request.Headers.Authorization.ToString();
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return null;
        var sent = Hash(header[scheme.Length..].Trim());
        var isOperator = CryptographicOperations.FixedTimeEquals(sent, _operator);
        var isViewer = CryptographicOperations.FixedTimeEquals(sent, _viewer ?? _operator) && _viewer is not null;
        return isOperator ? ApiRole.Operator : isViewer ? ApiRole.Viewer : null;
    }

    /// <summary>The role a request needs: see the class summary.</summary>
    public static ApiRole Required(HttpRequest request) =>
        request.Path.StartsWithSegments(AuditPath, StringComparison.OrdinalIgnoreCase) ? ApiRole.Operator
        : HttpMethods.IsGet(request.Method) || HttpMethods.IsHead(request.Method) ? ApiRole.Viewer
        : ApiRole.Operator;

    public const string AuditPath = "/api/audit";

    /// <summary>How a role is named in answers and in the audit trail.</summary>
    public static string Name(ApiRole role) => role == ApiRole.Operator ? "operator" : "viewer";

    private static byte[] Hash(string token) => SHA256.HashData(Encoding.UTF8.GetBytes(token));
}
